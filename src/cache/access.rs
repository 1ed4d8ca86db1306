//! Who may read what the cache holds. The cache never hands content to a
//! client the upstream would refuse: an object is served from disk for a
//! repository only if
//!
//! - the repository is known to hold it (a *link*: the upstream answered a
//!   request for this digest in this repository with 200), as distribution
//!   keeps per-repository links, so that a blob fetched through repository X
//!   is not served for Y on its digest alone; and
//! - the repository is known to be anonymously pullable (the upstream served
//!   it to a request with no credentials, or with a token ocirelay's token
//!   endpoint saw issued without credentials), or the client's own
//!   credentials were accepted by the upstream for it, within their
//!   lifetime.
//!
//! Otherwise the caller asks the upstream with a HEAD (free on Docker Hub)
//! with the client's credentials, and learns from the answer.
//!
//! Everything here is learned from upstream answers; nothing is assumed.
//! Keys are SipHash values under a per-process random key: no allocation per
//! lookup, and no way for a client to aim at a collision.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a repository learnt to be anonymously pullable is trusted
/// without hearing it again: a repository made private stops being served
/// from the cache to anonymous clients within this time.
pub const PUBLIC_TTL: Duration = Duration::from_secs(600);
/// Lifetime assumed for credentials whose expiry ocirelay did not see
/// (`expires_in` defaults to 60 s in the token spec).
pub const DEFAULT_GRANT_TTL: Duration = Duration::from_secs(60);
/// How long an anonymous pullability confirmed by the upstream is trusted
/// while the upstream cannot be asked (it may have been made private since).
pub const STALE_PUBLIC_MAX: Duration = Duration::from_secs(7 * 86_400);
/// Entries kept per map; past it the map is cleared (everything is learnt
/// again from upstream answers, at the cost of a HEAD each).
const MAX_ENTRIES: usize = 200_000;

/// What the cache knows about access, shared by all workers.
///
/// Shared (behind one mutex, held for a hash-map operation and never across
/// I/O) rather than per worker: otherwise each core would ask the upstream
/// again what another core already learnt.
pub struct Access {
    keys: RandomState,
    known: Mutex<Known>,
    /// Where new links and public repositories are appended, so that a
    /// restarted mirror can serve what it holds while the upstream is down
    /// (see [`Access::allowed_stale`]). `None`: memory only (tests).
    journal: Option<Mutex<std::fs::File>>,
}

/// What is known of a repository's anonymous pullability.
#[derive(Clone, Copy)]
struct Public {
    /// Fresh until (then the upstream is asked again).
    until: Instant,
    /// Served with no credentials at all (not only to anonymous tokens).
    open: bool,
    /// When the upstream last said so (wall clock: it outlives the process).
    confirmed: SystemTime,
}

#[derive(Default)]
struct Known {
    /// (registry, repository) -> anonymously pullable until, and whether
    /// the upstream served it with no credentials at all (`open`), or only
    /// with an anonymous token.
    public: HashMap<u64, Public>,
    /// (credentials, registry, repository) -> accepted until.
    granted: HashMap<u64, Instant>,
    /// (registry, repository, digest): the repository holds the object.
    links: HashMap<u64, ()>,
    /// The links learnt from anonymous requests: the only ones kept on
    /// disk, and the only ones served while the upstream cannot be asked.
    anon_links: HashMap<u64, ()>,
    /// Bearer tokens ocirelay's token endpoint saw issued: expiry, and
    /// whether they were issued without credentials.
    tokens: HashMap<u64, (Instant, bool)>,
}

fn bounded<V>(m: &mut HashMap<u64, V>) -> &mut HashMap<u64, V> {
    if m.len() >= MAX_ENTRIES {
        m.clear();
    }
    m
}

impl Default for Access {
    fn default() -> Self {
        Access {
            keys: RandomState::new(),
            known: Mutex::new(Known::default()),
            journal: None,
        }
    }
}

/// A request's identity for access decisions.
#[derive(Clone, Copy)]
pub struct Who<'a> {
    pub registry: &'a str,
    pub repo: &'a str,
    /// The client's `Authorization` header, as sent.
    pub authorization: Option<&'a [u8]>,
    /// The upstream was asked with the operator's credentials on the
    /// client's behalf (see `pull::upstream_auth`), not with the client's
    /// own: its answer says what the repository holds, never who may read
    /// it.
    pub via_operator: bool,
}

impl<'a> Who<'a> {
    pub fn new(registry: &'a str, repo: &'a str, authorization: Option<&'a [u8]>) -> Who<'a> {
        Who {
            registry,
            repo,
            authorization,
            via_operator: false,
        }
    }
}

impl Access {
    /// Access knowledge kept in `<root>/access`: the facts an earlier process
    /// learnt are loaded as *stale* (good for [`Access::allowed_stale`] only:
    /// a running upstream is asked again), and the file is rewritten without
    /// duplicates, then appended to.
    pub fn open(root: &std::path::Path) -> std::io::Result<Access> {
        let path = root.join("access");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let (mut a, body) = Access::load(&text);
        let tmp = root.join(format!("access.{}.tmp", std::process::id()));
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, &path)?;
        let file = std::fs::OpenOptions::new().append(true).open(&path)?;
        a.journal = Some(Mutex::new(file));
        Ok(a)
    }

    /// The knowledge in a journal's text (what [`Access::open`] reads back
    /// at start, however torn or foreign), and the journal to write in its
    /// place: the lines understood, each once (where it last stood), in
    /// their order.
    pub fn load(text: &str) -> (Access, String) {
        let a = Access::default();
        // Split at '\n' only, as the journal is written: `lines()` would also
        // take a '\r' before it, and a line ending in several would lose one
        // at each restart.
        let understood: Vec<&str> = text.split('\n').filter(|l| a.load_line(l)).collect();
        // Of equal lines the last is kept, not the first: a line means what
        // it does by where it stands among its repository's lines (a `U`
        // after a `P` withdraws it), and the last one is the last word.
        let mut seen = std::collections::HashSet::new();
        let mut kept: Vec<&str> = understood
            .into_iter()
            .rev()
            .filter(|l| seen.insert(*l))
            .collect();
        kept.reverse();
        let mut body = String::new();
        for line in kept {
            body.push_str(line);
            body.push('\n');
        }
        (a, body)
    }

    /// One journal line: `L <registry> <repo> <digest>` (a link learnt
    /// anonymously), `P <registry> <repo> <open> <unix secs>` (anonymously
    /// pullable, confirmed then) or `U <registry> <repo>` (refused to an
    /// anonymous request since). False if torn.
    fn load_line(&self, line: &str) -> bool {
        let f: Vec<&str> = line.split(' ').collect();
        let expired = Instant::now();
        let mut k = self.lock();
        match f.as_slice() {
            ["L", reg, repo, digest] => {
                let l = self.key(&[reg.as_bytes(), repo.as_bytes(), digest.as_bytes()]);
                bounded(&mut k.links).insert(l, ());
                bounded(&mut k.anon_links).insert(l, ());
                true
            }
            ["P", reg, repo, open @ ("0" | "1"), secs] => {
                let Some(confirmed) = secs
                    .parse()
                    .ok()
                    .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)))
                else {
                    return false;
                };
                let r = self.key(&[reg.as_bytes(), repo.as_bytes()]);
                let p = Public {
                    until: expired,
                    open: *open == "1",
                    confirmed,
                };
                bounded(&mut k.public).insert(r, p);
                true
            }
            ["U", reg, repo] => {
                let r = self.key(&[reg.as_bytes(), repo.as_bytes()]);
                k.public.remove(&r);
                true
            }
            _ => false,
        }
    }

    fn append(&self, line: String) {
        use std::io::Write;
        if let Some(j) = &self.journal {
            let mut f = j.lock().unwrap_or_else(|p| p.into_inner());
            let _ = f.write_all(line.as_bytes());
        }
    }

    /// Like [`Access::allowed`], for when the upstream cannot be asked
    /// (down, timing out, rate limiting): a repository the upstream last
    /// served anonymously is served anyway, however long ago that was.
    /// Credentials are never taken on trust this way.
    pub fn allowed_stale(&self, who: Who<'_>, digest: &str) -> bool {
        let link = self.key(&[
            who.registry.as_bytes(),
            who.repo.as_bytes(),
            digest.as_bytes(),
        ]);
        let repo = self.key(&[who.registry.as_bytes(), who.repo.as_bytes()]);
        let k = self.lock();
        k.anon_links.contains_key(&link)
            && k.public.get(&repo).is_some_and(|p| {
                p.confirmed
                    .elapsed()
                    .is_ok_and(|age| age <= STALE_PUBLIC_MAX)
                    && (p.open || who.authorization.is_some())
            })
    }

    /// What the shared tier may be told about `who`'s repository and
    /// `digest`: `(open, confirmed unix secs)` when the link was learnt
    /// anonymously and the repository was anonymously pullable within
    /// [`STALE_PUBLIC_MAX`]; `None` otherwise (nothing learnt with
    /// credentials ever leaves this node).
    pub fn shared_note(&self, who: Who<'_>, digest: &str) -> Option<(bool, u64)> {
        let link = self.key(&[
            who.registry.as_bytes(),
            who.repo.as_bytes(),
            digest.as_bytes(),
        ]);
        let repo = self.key(&[who.registry.as_bytes(), who.repo.as_bytes()]);
        let k = self.lock();
        if !k.anon_links.contains_key(&link) {
            return None;
        }
        let p = k.public.get(&repo)?;
        let age = p.confirmed.elapsed().ok()?;
        (age <= STALE_PUBLIC_MAX).then(|| {
            let secs = p
                .confirmed
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            (p.open, secs)
        })
    }

    /// Another node's note from the shared tier (see
    /// [`Access::shared_note`]): the link, learnt anonymously, and the
    /// repository's anonymous pullability as confirmed at `confirmed` (unix
    /// secs). It never makes a repository fresh ([`Access::allowed`] still
    /// asks the upstream when it answers); it only serves while the
    /// upstream cannot be asked, as this node's own journal would. A newer
    /// local fact wins.
    pub fn learn_shared(
        &self,
        registry: &str,
        repo: &str,
        digest: &str,
        open: bool,
        confirmed: u64,
    ) {
        let ok = |s: &str| !s.is_empty() && !s.contains([' ', '\n', '\r']);
        if !(ok(registry) && ok(repo) && ok(digest)) {
            return;
        }
        let r = self.key(&[registry.as_bytes(), repo.as_bytes()]);
        let when = UNIX_EPOCH.checked_add(Duration::from_secs(confirmed));
        let newer = {
            let k = self.lock();
            match (k.public.get(&r), when) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(p), Some(t)) => p.until <= Instant::now() && p.confirmed < t,
            }
        };
        let mut lines = vec![format!("L {registry} {repo} {digest}")];
        if newer {
            lines.push(format!(
                "P {registry} {repo} {} {confirmed}",
                u8::from(open)
            ));
        }
        for line in lines {
            if self.load_line(&line) {
                self.append(format!("{line}\n"));
            }
        }
    }

    /// The upstream refused `who`'s request for its repository (401, 403,
    /// 404): if `who` held an anonymous token (or no credentials, where the
    /// upstream used to serve those), the repository is not (or no longer)
    /// anonymously pullable, now and after a restart.
    pub fn learn_refused(&self, who: Who<'_>) {
        if who.via_operator {
            return; // the operator's account was refused, not the client
        }
        let repo = self.key(&[who.registry.as_bytes(), who.repo.as_bytes()]);
        let token = who.authorization.map(|a| self.key(&[a]));
        let now = Instant::now();
        let mut k = self.lock();
        // With no credentials at all, a token-auth registry answers 401 to
        // every request (its challenge), public or not: that withdraws only
        // an `open` pullability. A refusal to an anonymous token withdraws
        // any.
        let withdraws = match token {
            None => k.public.get(&repo).is_some_and(|p| p.open),
            Some(t) => k.tokens.get(&t).is_some_and(|(u, anon)| *anon && *u > now),
        };
        if withdraws && k.public.remove(&repo).is_some() {
            drop(k);
            self.append(format!("U {} {}\n", who.registry, who.repo));
        }
    }

    fn key(&self, parts: &[&[u8]]) -> u64 {
        let mut h = self.keys.build_hasher();
        for p in parts {
            p.hash(&mut h);
        }
        h.finish()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May `who` be served the object `digest` from the cache?
    pub fn allowed(&self, who: Who<'_>, digest: &str) -> bool {
        let link = self.key(&[
            who.registry.as_bytes(),
            who.repo.as_bytes(),
            digest.as_bytes(),
        ]);
        let repo = self.key(&[who.registry.as_bytes(), who.repo.as_bytes()]);
        let grant = who
            .authorization
            .map(|a| self.key(&[a, who.registry.as_bytes(), who.repo.as_bytes()]));
        let now = Instant::now();
        let k = self.lock();
        if !k.links.contains_key(&link) {
            return false;
        }
        // A request with no credentials at all is served only what the
        // upstream itself serves that way; everywhere else it must first
        // get the upstream's challenge, as without the cache (the client
        // learns the realm and gets a token).
        if k.public
            .get(&repo)
            .is_some_and(|p| p.until > now && (p.open || who.authorization.is_some()))
        {
            return true;
        }
        grant.is_some_and(|g| k.granted.get(&g).is_some_and(|t| *t > now))
    }

    /// The upstream answered `who`'s request for `digest` (if any) with 200:
    /// the repository holds it, and `who` may read the repository.
    pub fn learn_ok(&self, who: Who<'_>, digest: Option<&str>) {
        let repo = self.key(&[who.registry.as_bytes(), who.repo.as_bytes()]);
        let link =
            digest.map(|d| self.key(&[who.registry.as_bytes(), who.repo.as_bytes(), d.as_bytes()]));
        let auth = who.authorization.map(|a| {
            (
                self.key(&[a]),
                self.key(&[a, who.registry.as_bytes(), who.repo.as_bytes()]),
            )
        });
        let now = Instant::now();
        let mut k = self.lock();
        let mut journal = Vec::new();
        if who.via_operator {
            // Only what the repository holds; an anonymous link only while
            // the repository is known to be anonymously pullable (which is
            // when the operator's account is used at all).
            if let Some(l) = link {
                bounded(&mut k.links).insert(l, ());
                let public = k.public.get(&repo).is_some_and(|p| p.until > now);
                if public && bounded(&mut k.anon_links).insert(l, ()).is_none() {
                    journal.push(format!(
                        "L {} {} {}\n",
                        who.registry,
                        who.repo,
                        digest.unwrap_or_default()
                    ));
                }
            }
            drop(k);
            for line in journal {
                self.append(line);
            }
            return;
        }
        let open = auth.is_none();
        let anonymous = match auth {
            None => true,
            Some((token, grant)) => {
                let seen = k.tokens.get(&token).copied();
                let until = match seen {
                    Some((t, _)) if t > now => t,
                    _ => now + DEFAULT_GRANT_TTL,
                };
                bounded(&mut k.granted).insert(grant, until);
                matches!(seen, Some((t, true)) if t > now)
            }
        };
        if let Some(l) = link {
            bounded(&mut k.links).insert(l, ());
            if anonymous && bounded(&mut k.anon_links).insert(l, ()).is_none() {
                journal.push(format!(
                    "L {} {} {}\n",
                    who.registry,
                    who.repo,
                    digest.unwrap_or_default()
                ));
            }
        }
        if anonymous {
            let before = k.public.get(&repo).copied();
            let open = open || before.is_some_and(|p| p.until > now && p.open);
            let confirmed = SystemTime::now();
            bounded(&mut k.public).insert(
                repo,
                Public {
                    until: now + PUBLIC_TTL,
                    open,
                    confirmed,
                },
            );
            // Journalled when new, changed, or last confirmed over an hour
            // ago (so the file says roughly when, and stays small).
            let stale_note = before.is_none_or(|p| {
                p.open != open
                    || p.confirmed
                        .elapsed()
                        .map_or(true, |a| a > Duration::from_secs(3600))
            });
            if stale_note {
                let secs = confirmed
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                journal.push(format!(
                    "P {} {} {} {secs}\n",
                    who.registry,
                    who.repo,
                    u8::from(open)
                ));
            }
        }
        drop(k);
        // New facts only (rare once warm): a small append, outside the lock.
        for line in journal {
            self.append(line);
        }
    }

    /// `authorization` is no credentials at all, or a token ocirelay's
    /// token endpoint saw issued without credentials (still valid).
    pub fn is_anonymous(&self, authorization: Option<&[u8]>) -> bool {
        let Some(a) = authorization else {
            return true;
        };
        let key = self.key(&[a]);
        let now = Instant::now();
        self.lock()
            .tokens
            .get(&key)
            .is_some_and(|(until, anon)| *anon && *until > now)
    }

    /// `who`'s repository is known, freshly, to be served to `who`'s kind
    /// of anonymous request (no credentials at all needs `open`).
    pub fn is_public(&self, who: Who<'_>) -> bool {
        let repo = self.key(&[who.registry.as_bytes(), who.repo.as_bytes()]);
        let now = Instant::now();
        self.lock()
            .public
            .get(&repo)
            .is_some_and(|p| p.until > now && (p.open || who.authorization.is_some()))
    }

    /// ocirelay's token endpoint relayed a token: remember its lifetime and
    /// whether it was issued without credentials (`anonymous`).
    pub fn learn_token(&self, token: &str, expires_in: Duration, anonymous: bool) {
        let bearer = format!("Bearer {token}");
        let key = self.key(&[bearer.as_bytes()]);
        let until = Instant::now() + expires_in;
        bounded(&mut self.lock().tokens).insert(key, (until, anonymous));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:aa";

    fn who<'a>(repo: &'a str, auth: Option<&'a [u8]>) -> Who<'a> {
        Who::new("docker.io", repo, auth)
    }

    #[test]
    fn a_private_object_is_served_only_to_credentials_the_upstream_accepted() {
        let a = Access::default();
        let alice: &[u8] = b"Bearer alice";
        let anon: &[u8] = b"Bearer anon";
        a.learn_token("anon", Duration::from_secs(300), true);
        a.learn_token("alice", Duration::from_secs(300), false);
        // Nothing known: nobody.
        assert!(!a.allowed(who("private/secret", Some(alice)), D));
        // Alice's credentials were accepted for it.
        a.learn_ok(who("private/secret", Some(alice)), Some(D));
        assert!(a.allowed(who("private/secret", Some(alice)), D));
        // Not for the anonymous token, nor without credentials, nor under
        // another repository's name.
        assert!(!a.allowed(who("private/secret", Some(anon)), D));
        assert!(!a.allowed(who("private/secret", None), D));
        assert!(!a.allowed(who("library/alpine", Some(alice)), D));
    }

    /// Found by the `cache_index` fuzz target: the rewrite at start kept
    /// the first of two equal lines, so a withdrawal (`U`) repeated after a
    /// later confirmation (`P`) was dropped, and the repository, private
    /// since, was served from the cache to anonymous clients after a second
    /// restart while the upstream was down.
    #[test]
    fn a_restart_keeps_the_last_word_on_a_repository() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let journal = format!(
            "L docker.io org/app {D}\nU docker.io org/app\nP docker.io org/app 1 {now}\nU docker.io org/app\n"
        );
        let (first, rewritten) = Access::load(&journal);
        assert!(!first.allowed_stale(who("org/app", None), D));
        let (second, again) = Access::load(&rewritten);
        assert!(
            !second.allowed_stale(who("org/app", None), D),
            "{rewritten:?}"
        );
        assert_eq!(again, rewritten);
        // Confirmed again after the withdrawal: served stale again.
        let (third, _) = Access::load(&format!("{rewritten}P docker.io org/app 1 {now}\n"));
        assert!(third.allowed_stale(who("org/app", None), D));
    }

    /// Found by the `cache_index` fuzz target: a line ending in "\r\r\n"
    /// lost a '\r' at each rewrite.
    #[test]
    fn a_rewritten_journal_rewrites_to_itself() {
        let journal = format!("L docker.io org/app {D}\r\r\nU docker.io x\r\nP a b 1 5\n");
        let (_, rewritten) = Access::load(&journal);
        assert_eq!(rewritten, journal);
        assert_eq!(Access::load(&rewritten).1, rewritten);
    }

    #[test]
    fn what_was_learnt_survives_a_restart_as_stale_knowledge_only() {
        let root = std::env::temp_dir().join(format!("ocirelay-access-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        {
            let a = Access::open(&root).unwrap();
            a.learn_token("anon", Duration::from_secs(300), true);
            a.learn_ok(who("library/alpine", Some(b"Bearer anon")), Some(D));
            a.learn_ok(who("private/secret", Some(b"Bearer alice")), Some(D));
        }
        let a = Access::open(&root).unwrap();
        let t: &[u8] = b"Bearer new";
        // Not fresh: a running upstream is asked again.
        assert!(!a.allowed(who("library/alpine", Some(t)), D));
        // But with the upstream down, what was public is served...
        assert!(a.allowed_stale(who("library/alpine", Some(t)), D));
        assert!(!a.allowed_stale(who("library/alpine", None), D));
        // ...and what was private never is.
        assert!(!a.allowed_stale(who("private/secret", Some(t)), D));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_refusal_to_an_anonymous_request_withdraws_pullability_for_good() {
        let root = std::env::temp_dir().join(format!("ocirelay-revoke-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        {
            let a = Access::open(&root).unwrap();
            a.learn_token("anon", Duration::from_secs(300), true);
            a.learn_token("alice", Duration::from_secs(300), false);
            a.learn_ok(who("org/app", Some(b"Bearer anon")), Some(D));
            // A credentialed link is never one for offline use.
            a.learn_ok(who("org/app", Some(b"Bearer alice")), Some("sha256:bb"));
            assert!(a.allowed_stale(who("org/app", Some(b"Bearer x")), D));
            assert!(!a.allowed_stale(who("org/app", Some(b"Bearer x")), "sha256:bb"));
            // Made private: an anonymous request is refused.
            a.learn_refused(who("org/app", Some(b"Bearer anon")));
            assert!(!a.allowed(who("org/app", Some(b"Bearer x")), D));
            assert!(!a.allowed_stale(who("org/app", Some(b"Bearer x")), D));
        }
        // And after a restart.
        let a = Access::open(&root).unwrap();
        assert!(!a.allowed_stale(who("org/app", Some(b"Bearer x")), D));
        // A refusal to credentials says nothing about anonymous access.
        a.learn_token("anon2", Duration::from_secs(300), true);
        a.learn_ok(who("org/lib", Some(b"Bearer anon2")), Some(D));
        a.learn_refused(who("org/lib", Some(b"Bearer mallory")));
        assert!(a.allowed_stale(who("org/lib", Some(b"Bearer x")), D));
        // Nor does the challenge a token-auth registry answers every
        // request without credentials with.
        a.learn_refused(who("org/lib", None));
        assert!(a.allowed_stale(who("org/lib", Some(b"Bearer x")), D));
        // Pullability confirmed too long ago is not trusted offline.
        let old = "P docker.io org/old 0 1000\nL docker.io org/old sha256:aa\n";
        std::fs::write(root.join("access"), old).unwrap();
        let a = Access::open(&root).unwrap();
        assert!(!a.allowed_stale(who("org/old", Some(b"Bearer x")), D));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn an_anonymous_success_makes_the_repository_public_for_its_links() {
        let a = Access::default();
        a.learn_token("anon", Duration::from_secs(300), true);
        a.learn_ok(who("library/alpine", Some(b"Bearer anon")), Some(D));
        // Any token will do; no credentials at all still get the challenge.
        assert!(a.allowed(who("library/alpine", Some(b"Bearer other")), D));
        assert!(!a.allowed(who("library/alpine", None), D));
        // A registry that serves with no credentials at all (no token auth).
        a.learn_ok(who("k8s/pause", None), Some(D));
        assert!(a.allowed(who("k8s/pause", None), D));
        // Another digest was never seen in this repository.
        assert!(!a.allowed(who("library/alpine", None), "sha256:bb"));
        // A token not seen issued is not taken for anonymous.
        a.learn_ok(who("library/busybox", Some(b"Bearer unknown")), Some(D));
        assert!(!a.allowed(who("library/busybox", None), D));
    }
}
