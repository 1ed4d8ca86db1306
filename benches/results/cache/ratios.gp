set terminal pngcairo size 1400,520 font 'sans,10'
set output '/work/main/benches/results/cache/ratios.png'
set termoption noenhanced
set datafile missing '?'
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key outside right top font ',9'
set grid ytics
set yrange [0:*]
set title 'cache workloads: throughput x direct (higher is better; MB/s for blobs, req/s for manifests; miss vs a direct fetch)'
plot '/work/main/benches/results/cache/chart.dat' using 2:xtic(1) title columnheader(2) lc rgb '#1f77b4', '/work/main/benches/results/cache/chart.dat' using 3:xtic(1) title columnheader(3) lc rgb '#2ca02c', '/work/main/benches/results/cache/chart.dat' using 4:xtic(1) title columnheader(4) lc rgb '#98df8a', '/work/main/benches/results/cache/chart.dat' using 5:xtic(1) title columnheader(5) lc rgb '#ff7f0e', '/work/main/benches/results/cache/chart.dat' using 6:xtic(1) title columnheader(6) lc rgb '#ffbb78', '/work/main/benches/results/cache/chart.dat' using 7:xtic(1) title columnheader(7) lc rgb '#9467bd', '/work/main/benches/results/cache/chart.dat' using 8:xtic(1) title columnheader(8) lc rgb '#c5b0d5', '/work/main/benches/results/cache/chart.dat' using 9:xtic(1) title columnheader(9) lc rgb '#d62728', '/work/main/benches/results/cache/chart.dat' using 10:xtic(1) title columnheader(10) lc rgb '#ff9896', 1 with lines lc rgb 'black' dt 2 notitle
