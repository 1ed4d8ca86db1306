# The anchors' configurations (sourced by benches/run.sh and benches/cache.sh, so both measure
# the same Caddy and nginx): Caddy and nginx as Docker Hub relays, nginx with proxy_cache, and
# distribution's registry in pull-through mode, each in front of the Docker Hub double.
#
# Reads: W (work directory), REG_HP / TOKEN_HP / CDN_HP (the double's host:port for registry,
# token host and CDN), HUB_CA (the double's CA file), ANCHOR_CERT / ANCHOR_KEY (the proxies'
# client-side certificate chain and key). The anchors are tuned the way a careful operator
# would (BENCHMARKS.md, "Configuration notes"): a relay that reopens upstream TLS connections
# during a run measures its configuration, not itself.

# anchor_caddyfile FILE TLS_PORT HTTP_PORT
anchor_caddyfile() {
    {
        cat <<EOF
{
	admin off
	auto_https off
	storage file_system $W/caddy-data
}
EOF
        _anchor_caddy_site https "$2"
        _anchor_caddy_site http "$3"
    } >"$1"
}

# One transport for every upstream: 64 idle connections per host (Caddy's default is 32)
# so that 64 client connections never wait for a new upstream TLS handshake.
_anchor_caddy_transport() {
    cat <<EOF
			transport http {
				tls_trusted_ca_certs $HUB_CA
				keepalive_idle_conns_per_host 64
			}
EOF
}

_anchor_caddy_site() { # scheme port
    local tls_line=
    [ "$1" = https ] && tls_line="tls $ANCHOR_CERT $ANCHOR_KEY"
    cat <<EOF
$1://127.0.0.1:$2 {
	$tls_line
	handle /v2/* {
		reverse_proxy https://$REG_HP {
			header_up Host {http.reverse_proxy.upstream.hostport}
			header_down WWW-Authenticate "https://$TOKEN_HP" "$1://{http.request.hostport}"
			header_down Location "https://$CDN_HP" "$1://{http.request.hostport}"
$(_anchor_caddy_transport)
		}
	}
	handle /token* {
		reverse_proxy https://$TOKEN_HP {
			header_up Host {http.reverse_proxy.upstream.hostport}
$(_anchor_caddy_transport)
		}
	}
	handle /* {
		reverse_proxy https://$CDN_HP {
			header_up Host {http.reverse_proxy.upstream.hostport}
$(_anchor_caddy_transport)
		}
	}
}
EOF
}

# anchor_nginx_conf FILE WORKERS TLS_PORT HTTP_PORT [cache]
# With "cache", the CDN's blob responses are cached (proxy_cache + proxy_cache_lock) in
# $W/nginx/cache; everything else is the same relay.
anchor_nginx_conf() {
    local f=$1 workers=$2 tls_port=$3 http_port=$4 cache=${5:-} pfx cache_http= cache_loc=
    pfx=$W/nginx${cache:+-cache}
    mkdir -p "$pfx"
    if [ -n "$cache" ]; then
        # levels=1:2 as usual; use_temp_path=off: a blob is written once, in the cache's own
        # directory, and renamed into place (no copy across directories).
        cache_http="proxy_cache_path $pfx/cache levels=1:2 keys_zone=blobs:16m max_size=100g inactive=30d use_temp_path=off;"
        # The key is the CDN path without its query: the path names the content (it holds
        # the digest), the query is a signature that differs per redirect, so with the
        # default key ($scheme$proxy_host$request_uri) no request would ever hit. $scheme is
        # left out too: TLS and plain-HTTP clients share one copy.
        # proxy_cache needs proxy_buffering on: nginx writes the body to the cache file as
        # it passes it on. The lock makes concurrent misses of one key wait for the first
        # (nginx polls the lock every 500 ms, then serves them from the stored file); its
        # timeout is raised from 5 s so that a big blob's followers do not each fetch it.
        cache_loc="proxy_cache blobs;
            proxy_cache_key \$proxy_host\$uri;
            proxy_cache_valid 200 30d;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 10m;
            proxy_cache_lock_age 10m;
            proxy_buffering on;
            add_header X-Cache-Status \$upstream_cache_status always;"
    fi
    cat >"$f" <<EOF
worker_processes $workers;
daemon off;
master_process on;
pid $pfx/nginx.pid;
error_log $pfx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $pfx/client_body;
    proxy_temp_path $pfx/proxy;
    fastcgi_temp_path $pfx/fastcgi;
    uwsgi_temp_path $pfx/uwsgi;
    scgi_temp_path $pfx/scgi;
    # Client side: the default 1000 requests per connection would close client connections
    # mid-run.
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    sendfile on;
    tcp_nopush on;
    $cache_http

    # Upstream side: as many idle connections per worker as the benchmark has client
    # connections (64), each kept for as many requests as the client side (nginx's upstream
    # default is 1000, after which it closes the connection and opens a new TLS one).
    upstream hub_registry { server $REG_HP; keepalive 64; keepalive_requests 1000000; }
    upstream hub_auth     { server $TOKEN_HP; keepalive 64; keepalive_requests 1000000; }
    upstream hub_cdn      { server $CDN_HP; keepalive 64; keepalive_requests 1000000; }

    # header_down WWW-Authenticate "https://auth.docker.io" "https://{host}"
    map \$upstream_http_www_authenticate \$hub_www_authenticate {
        "~^(?<pre>.*)https://${TOKEN_HP//./\\.}(?<post>.*)\$" "\${pre}\$scheme://\$http_host\${post}";
        default \$upstream_http_www_authenticate;
    }

    proxy_http_version 1.1;
    proxy_ssl_verify on;
    proxy_ssl_trusted_certificate $HUB_CA;
    proxy_ssl_name localhost;
    proxy_ssl_server_name on;
    proxy_ssl_session_reuse on;
    # A relay streams: each read from upstream is written to the client as it comes, never
    # spooled (Caddy and ocirelay stream too).
    proxy_buffering off;
    proxy_buffer_size 16k;
    # Used when buffering is on (the cache location).
    proxy_buffers 8 32k;
    proxy_busy_buffers_size 64k;

    server {
        listen 127.0.0.1:$tls_port ssl;
        listen 127.0.0.1:$http_port;
        ssl_certificate $ANCHOR_CERT;
        ssl_certificate_key $ANCHOR_KEY;
        ssl_protocols TLSv1.2 TLSv1.3;

        location /v2/ {
            proxy_pass https://hub_registry;
            proxy_set_header Host $REG_HP;
            proxy_set_header Connection "";
            proxy_hide_header WWW-Authenticate;
            add_header WWW-Authenticate \$hub_www_authenticate always;
            # header_down Location "https://production.cloudflare.docker.com" "https://{host}"
            proxy_redirect https://$CDN_HP/ \$scheme://\$http_host/;
        }
        location /token {
            proxy_pass https://hub_auth;
            proxy_set_header Host $TOKEN_HP;
            proxy_set_header Connection "";
        }
        location / {
            proxy_pass https://hub_cdn;
            proxy_set_header Host $CDN_HP;
            proxy_set_header Connection "";
            $cache_loc
        }
    }
}
EOF
}

# anchor_nginx_cache_file KEY_PATH: the file nginx stores a CDN path under (the cache key is
# $proxy_host$uri: "hub_cdn" + the path; levels=1:2 names the directories after the last
# characters of the key's md5).
anchor_nginx_cache_file() {
    local h
    h=$(printf 'hub_cdn%s' "$1" | md5sum | cut -c1-32)
    echo "$W/nginx-cache/cache/${h:31:1}/${h:29:2}/$h"
}

# anchor_distribution_conf FILE TLS_PORT: distribution's registry as a pull-through cache of
# the double (proxy.remoteurl), storage in $W/distribution, TLS with the proxies' certificate.
# No `auth:`: a pull-through mirror is usually run open, so its clients do no token flow
# (benches/cache.sh runs the load generator with --anonymous against it). The in-memory blob
# descriptor cache of Debian's default config is kept (it nearly doubles distribution's
# manifest GETs here); it also remembers blobs whose files a benchmark removed, so
# benches/cache.sh restarts distribution after it drops one.
anchor_distribution_conf() {
    cat >"$1" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: $W/distribution
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$2
  tls:
    certificate: $ANCHOR_CERT
    key: $ANCHOR_KEY
proxy:
  remoteurl: https://$REG_HP
EOF
}
