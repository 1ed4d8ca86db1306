set terminal pngcairo size 1800,420 font 'sans,10'
set output '/work/main/benches/results/focus/ratios.png'
set termoption noenhanced
set datafile missing '?'
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set xtics rotate by -30 font ',9' nomirror
set grid ytics
set key top left font ',9'
set yrange [0:*]
set multiplot layout 1,3
set title 'core: req/s × direct (higher is better)'
set xrange [-0.6:3.6]
plot '/work/main/benches/results/focus/chart.core.0.dat' using 2:xtic(1) title 'caddy' lc rgb '#1f77b4', '/work/main/benches/results/focus/chart.core.0.dat' using 3:xtic(1) title 'nginx' lc rgb '#2ca02c', '/work/main/benches/results/focus/chart.core.0.dat' using 4:xtic(1) title 'ocirelay' lc rgb '#d62728', '/work/main/benches/results/focus/chart.core.0.dat' using 5:xtic(1) title 'ocirelay_nv' lc rgb '#ff9896', 1 with lines lc rgb 'black' dt 2 notitle
set title 'core: req/s × Caddy (higher is better)'
set xrange [-0.6:3.6]
plot '/work/main/benches/results/focus/chart.core.1.dat' using 2:xtic(1) title 'nginx' lc rgb '#2ca02c', '/work/main/benches/results/focus/chart.core.1.dat' using 3:xtic(1) title 'ocirelay' lc rgb '#d62728', '/work/main/benches/results/focus/chart.core.1.dat' using 4:xtic(1) title 'ocirelay_nv' lc rgb '#ff9896', 1 with lines lc rgb 'black' dt 2 notitle
set title 'core: proxy CPU per request × Caddy (lower is better)'
set xrange [-0.6:3.6]
plot '/work/main/benches/results/focus/chart.core.2.dat' using 2:xtic(1) title 'nginx' lc rgb '#2ca02c', '/work/main/benches/results/focus/chart.core.2.dat' using 3:xtic(1) title 'ocirelay' lc rgb '#d62728', '/work/main/benches/results/focus/chart.core.2.dat' using 4:xtic(1) title 'ocirelay_nv' lc rgb '#ff9896', 1 with lines lc rgb 'black' dt 2 notitle
unset multiplot
