# bench/report.awk: turn bench/run.sh's measurements into Markdown tables.
#
# Input files (tab-separated): labels.tsv (target, label, suite) then measurements.tsv (with
# header). Only the http1 suite's rows are used (the other suites: report-suites.awk).
# Variables: conc (connections of the max-throughput run), rates (space-separated), conn_conc
# (connections of the new-connection runs of the two-hop targets, kind "conn").
# Targets are printed in the order in which they were measured. When a measurement was repeated
# (BENCH_REPEAT), the median run is shown: by req/s for max throughput and new connections, by
# p99 for latency.

FNR == NR {
    if ($3 != "" && $3 != "http1") next
    label[$1] = $2
    order[++n] = $1
    next
}
FNR == 1 { next } # header of measurements.tsv
$22 != "" && $22 != "http1" { next }

{
    t = $1; kind = $2; r = $3
    key = t SUBSEP kind SUBSEP r
    m = ++runs[key]
    # The figure the median is taken on: throughput for max and conn runs, p99 for fixed-rate runs.
    sortval[key, m] = (kind == "max" || kind == "conn") ? $8 : $10
    line[key, m] = $0
    rss_idle[t] = $15
    if ($18 == 1) noisy[t] = 1
}

# Pick the median run of each measurement and load its fields.
function choose(   key, m, i, j, tmp, idx, f) {
    for (key in runs) {
        m = runs[key]
        for (i = 1; i <= m; i++) idx[i] = i
        for (i = 2; i <= m; i++) # insertion sort of run numbers by sortval
            for (j = i; j > 1 && sortval[key, idx[j - 1]] + 0 > sortval[key, idx[j]] + 0; j--) {
                tmp = idx[j]; idx[j] = idx[j - 1]; idx[j - 1] = tmp
            }
        split(line[key, idx[int((m + 1) / 2)]], f, "\t")
        lo[key] = sortval[key, idx[1]]; hi[key] = sortval[key, idx[m]]
        have[key] = 1
        rps[key] = f[8]; errs[key] = f[7]
        p50[key] = f[9]; p99[key] = f[10]; p999[key] = f[11]
        cpu_us[key] = f[13]; core[key] = f[14]
        if (f[2] == "max") rss_load[f[1]] = f[16]
        if (m > nruns) nruns = m
    }
    multi = nruns > 1
}

# ---- formatting helpers ----------------------------------------------------------------

function is_num(x) { return x != "" && x != "nan" && x != "-nan" }

# A latency in seconds, as microseconds (or milliseconds when large).
function lat(s) {
    if (!is_num(s)) return "n/a"
    if (s >= 0.001 || s <= -0.001) return sprintf("%.2f ms", s * 1e3)
    return sprintf("%d µs", s * 1e6 + (s >= 0 ? 0.5 : -0.5))
}

# An added latency (may be negative within the noise).
function added(s) {
    if (!is_num(s)) return "n/a"
    return (s >= 0 ? "+" : "") lat(s)
}

# a / b as "1.23×", or "—" when b is missing or not positive.
function ratio(a, b) {
    if (!is_num(a) || !is_num(b) || b + 0 <= 0) return "—"
    return sprintf("%.2f×", a / b)
}

function mib(kib) { return (kib + 0 > 0) ? sprintf("%.1f MiB", kib / 1024) : "—" }

function name(t) { return label[t] (noisy[t] ? " ⚠ NOISY" : "") }

# ---- tables ------------------------------------------------------------------------------

END {
    choose()
    if (nruns > 1) {
        printf "Each measurement was run %d times; the tables show the median run (throughput: by req/s,\n", nruns
        print "latency: by p99). All runs are in measurements.tsv."
        print ""
    }
    # Throughput, CPU and memory, from the closed-loop saturation run.
    print "## Max throughput, CPU per request and memory"
    print ""
    printf "Closed loop: oha with %d connections for the whole run. The proxy (HAProxy, nginx) is pinned\n", conc
    print "to one core; oha and the upstream share the other. CPU per request = the proxy's utime+stime"
    print "over the run divided by the responses completed (both proxies for 2 hops). RSS is VmRSS: idle"
    print "after start-up, and the maximum sampled during this run (summed over the proxy's processes)."
    print ""
    printf "| target | req/s |%s × direct | × HAProxy | × nginx | proxy CPU per req | × HAProxy | × nginx | proxy core busy | RSS idle | RSS under load |\n", multi ? " req/s, all runs |" : ""
    printf "|---|---:|%s---:|---:|---:|---:|---:|---:|---:|---:|---:|\n", multi ? "---:|" : ""
    d = "direct" SUBSEP "max" SUBSEP ""
    h = "haproxy" SUBSEP "max" SUBSEP ""
    g = "nginx" SUBSEP "max" SUBSEP ""
    for (i = 1; i <= n; i++) {
        t = order[i]; k = t SUBSEP "max" SUBSEP ""
        if (!have[k]) continue
        proxied = (t != "direct")
        printf "| %s | %.0f |%s %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", name(t), rps[k],
            multi ? sprintf(" %.0f–%.0f |", lo[k], hi[k]) : "",
            ratio(rps[k], have[d] ? rps[d] : ""),
            ratio(rps[k], have[h] ? rps[h] : ""),
            ratio(rps[k], have[g] ? rps[g] : ""),
            proxied ? sprintf("%.2f µs", cpu_us[k]) : "—",
            proxied ? ratio(cpu_us[k], have[h] ? cpu_us[h] : "") : "—",
            proxied ? ratio(cpu_us[k], have[g] ? cpu_us[g] : "") : "—",
            proxied ? sprintf("%.0f%%", core[k]) : "—",
            proxied ? mib(rss_idle[t]) : "—",
            proxied ? mib(rss_load[t]) : "—"
    }
    print ""

    # Latency at each fixed rate, from the open-loop runs.
    nr = split(rates, rl, " ")
    for (j = 1; j <= nr; j++) {
        r = rl[j]
        d = "direct" SUBSEP "rate" SUBSEP r
        h = "haproxy" SUBSEP "rate" SUBSEP r
        g = "nginx" SUBSEP "rate" SUBSEP r
        printf "## Latency at %d requests/s\n\n", r
        print "Open loop: oha -q RATE --latency-correction (a request's latency counts from when it was due,"
        print "so a stall is not hidden by coordinated omission). Added = proxied minus direct; the ratio"
        print "columns compare added latency with HAProxy's and nginx's (p50 / p99 / p99.9)."
        print ""
        printf "| target | p50 | p99 | p99.9 |%s added p50 | added p99 | added p99.9 | × direct (p50 / p99 / p99.9) | added ÷ HAProxy's | added ÷ nginx's | req/s | errors | proxy core busy |\n", multi ? " p99, all runs |" : ""
        printf "|---|---:|---:|---:|%s---:|---:|---:|---:|---:|---:|---:|---:|---:|\n", multi ? "---:|" : ""
        for (i = 1; i <= n; i++) {
            t = order[i]; k = t SUBSEP "rate" SUBSEP r
            if (!have[k]) continue
            proxied = (t != "direct")
            a50 = a99 = a999 = "nan"
            if (have[d] && proxied) {
                a50 = p50[k] - p50[d]; a99 = p99[k] - p99[d]; a999 = p999[k] - p999[d]
            }
            vs_h = vs_g = "—"
            if (proxied && have[d] && have[h] && t != "haproxy")
                vs_h = ratio(a50, p50[h] - p50[d]) " / " ratio(a99, p99[h] - p99[d]) " / " ratio(a999, p999[h] - p999[d])
            if (proxied && have[d] && have[g] && t != "nginx")
                vs_g = ratio(a50, p50[g] - p50[d]) " / " ratio(a99, p99[g] - p99[d]) " / " ratio(a999, p999[g] - p999[d])
            vs_d = "—"
            if (proxied && have[d])
                vs_d = ratio(p50[k], p50[d]) " / " ratio(p99[k], p99[d]) " / " ratio(p999[k], p999[d])
            printf "| %s | %s | %s | %s |%s %s | %s | %s | %s | %s | %s | %.0f | %d | %s |\n", name(t),
                lat(p50[k]), lat(p99[k]), lat(p999[k]),
                multi ? sprintf(" %s – %s |", lat(lo[k]), lat(hi[k])) : "",
                proxied ? added(a50) : "—", proxied ? added(a99) : "—", proxied ? added(a999) : "—",
                vs_d, vs_h, vs_g, rps[k], errs[k],
                proxied ? sprintf("%.0f%%", core[k]) : "—"
        }
        print ""
    }

    # New connections between the two sidecars (one per request).
    p = "mesh-2hop" SUBSEP "conn" SUBSEP ""
    q = "mesh-2hop-mtls" SUBSEP "conn" SUBSEP ""
    if (have[p] || have[q]) {
        print "## New connections between the two proxies"
        print ""
        printf "Closed loop: oha with %d connections sends HTTP/1.1 upgrade requests (`Connection: upgrade`,\n", conn_conc
        print "which mesh-echo answers with a plain 200). The client sidecar sends every upgrade request"
        print "over a connection of its own to the server sidecar and closes it after the answer, so each"
        print "request is one new connection between the proxies: for mTLS a full TLS 1.3 handshake, with"
        print "both certificates verified and the server's identity checked. Both proxies share one core, so"
        print "connections/s is what one core does for both ends, and CPU per connection is both proxies'."
        print ""
        print "| target | new connections/s | errors | proxies' CPU per connection | proxy core busy |"
        print "|---|---:|---:|---:|---:|"
        for (i = 1; i <= n; i++) {
            t = order[i]; k = t SUBSEP "conn" SUBSEP ""
            if (!have[k]) continue
            printf "| %s | %.0f | %d | %.1f µs | %.0f%% |\n", name(t), rps[k], errs[k], cpu_us[k], core[k]
        }
        print ""
        if (have[p] && have[q] && cpu_us[q] > cpu_us[p]) {
            tls = cpu_us[q] - cpu_us[p]
            printf "A new mTLS connection costs %.1f µs of CPU more than a plaintext one (client and server\n", tls
            printf "handshake together): about %.0f handshakes per second on one core, against %.0f new\n", 1e6 / tls, rps[q]
            printf "mTLS connections/s through both proxies (%.2f× the plaintext rate).\n", rps[q] / rps[p]
            print ""
        }
    }

    # The targets of the mTLS work, from this run.
    d = "direct" SUBSEP "rate" SUBSEP "1000"
    k = "mesh-2hop-mtls" SUBSEP "rate" SUBSEP "1000"
    if (have[d] && have[k]) {
        print "## Targets"
        print ""
        a99 = p99[k] - p99[d]
        printf "- 2 hops with mTLS add %s at p99 over direct at 1,000 req/s (target: at most +100 µs): %s.\n",
            added(a99), a99 <= 0.0001 ? "met" : "not met"
        pl = "mesh-2hop" SUBSEP "rate" SUBSEP "1000"
        if (have[pl])
            printf "- mTLS over plaintext, 2 hops at 1,000 req/s: p50 %s, p99 %s.\n", added(p50[k] - p50[pl]), added(p99[k] - p99[pl])
        mp = "mesh-2hop" SUBSEP "max" SUBSEP ""; mq = "mesh-2hop-mtls" SUBSEP "max" SUBSEP ""
        if (have[mp] && have[mq])
            printf "- CPU per request of both proxies at saturation: %.2f µs with mTLS, %.2f µs plaintext (%s).\n",
                cpu_us[mq], cpu_us[mp], ratio(cpu_us[mq], cpu_us[mp])
        print ""
    }
}
