# bench/report-suites.awk: the tables of bench/run.sh's h2, grpc and tcp suites (report.awk does
# http1). Input: labels.tsv (target, label, suite) then measurements.tsv (with header).
# Variables: suite (h2|grpc|tcp), and the suite's settings (conc, streams, rates, rate_clients,
# h2_n, calls, msg, redis_clients, redis_n, tests). The median run of repeated measurements is
# used: by req/s for throughput runs, by p99 for fixed-rate runs, by mean for sequential runs.
# The http1 suite's CPU per request is shown beside h2's for comparison.

FNR == NR {
    if ($3 == suite && !seen[$1]++) { label[$1] = $2; order[++n] = $1 }
    next
}
FNR == 1 { next }
$22 == "" || $22 == "http1" {
    # The HTTP/1.1 run's CPU per request at saturation, for the h2 table.
    if ($2 == "max") { h1n[$1]++; h1cpu[$1, h1n[$1]] = $13; h1rps[$1, h1n[$1]] = $8 }
    next
}
$22 != suite { next }
{
    t = $1; kind = $2; r = $3
    key = t SUBSEP kind SUBSEP r
    m = ++runs[key]
    if (!kseen[kind]++) kinds[++nk] = kind
    if (kind == "rate") sortval[key, m] = $10
    else if (suite == "grpc") sortval[key, m] = $23
    else sortval[key, m] = $8
    line[key, m] = $0
    rss_idle[t] = $15
    if ($18 == 1) noisy[t] = 1
}

function choose(   key, m, i, j, tmp, idx, f) {
    for (key in runs) {
        m = runs[key]
        for (i = 1; i <= m; i++) idx[i] = i
        for (i = 2; i <= m; i++)
            for (j = i; j > 1 && sortval[key, idx[j - 1]] + 0 > sortval[key, idx[j]] + 0; j--) {
                tmp = idx[j]; idx[j] = idx[j - 1]; idx[j - 1] = tmp
            }
        split(line[key, idx[int((m + 1) / 2)]], f, "\t")
        lo[key] = sortval[key, idx[1]]; hi[key] = sortval[key, idx[m]]
        have[key] = 1
        rps[key] = f[8]; errs[key] = f[7]; resp[key] = f[5]
        p50[key] = f[9]; p99[key] = f[10]; p999[key] = f[11]; mean[key] = f[23]
        cpu_us[key] = f[13]; core[key] = f[14]; rss_load[key] = f[16]
        if (m > nruns) nruns = m
    }
    multi = nruns > 1
}

# The median of the http1 suite's CPU per request of target t ("" when not run).
function h1_cpu(t,   m, i, j, tmp, idx) {
    m = h1n[t]
    if (!m) return ""
    for (i = 1; i <= m; i++) idx[i] = i
    for (i = 2; i <= m; i++)
        for (j = i; j > 1 && h1rps[t, idx[j - 1]] + 0 > h1rps[t, idx[j]] + 0; j--) {
            tmp = idx[j]; idx[j] = idx[j - 1]; idx[j - 1] = tmp
        }
    return h1cpu[t, idx[int((m + 1) / 2)]]
}

function is_num(x) { return x != "" && x != "nan" && x != "-nan" }
function lat(s) {
    if (!is_num(s)) return "n/a"
    if (s >= 0.001 || s <= -0.001) return sprintf("%.2f ms", s * 1e3)
    return sprintf("%d µs", s * 1e6 + (s >= 0 ? 0.5 : -0.5))
}
function added(s) { return is_num(s) ? (s >= 0 ? "+" : "") lat(s) : "n/a" }
function ratio(a, b) {
    if (!is_num(a) || !is_num(b) || b + 0 <= 0) return "—"
    return sprintf("%.2f×", a / b)
}
function mib(kib) { return (kib + 0 > 0) ? sprintf("%.1f MiB", kib / 1024) : "—" }
function name(t) { return label[t] (noisy[t] ? " ⚠ NOISY" : "") }
function hops(t) { return t == "direct" ? 0 : (t == "mesh-2hop" ? 2 : 1) }
function sub_(a, b) { return (is_num(a) && is_num(b)) ? a - b : "nan" }
function div_(a, b) { return is_num(a) ? a / b : "nan" }

# Throughput table of one kind (h2 "max", tcp "set"/"get").
function throughput(kind, title,   i, t, k, d, h, proxied, h1) {
    d = "direct" SUBSEP kind SUBSEP ""; h = "haproxy" SUBSEP kind SUBSEP ""
    printf "| target | req/s |%s × direct | × HAProxy | proxy CPU per req | × HAProxy |%s proxy core busy | RSS idle / under load | p50 | p99 | errors |\n",
        multi ? " req/s, all runs |" : "", suite == "h2" ? " HTTP/1.1 CPU per req (http1 suite) |" : ""
    printf "|---|---:|%s---:|---:|---:|---:|%s---:|---:|---:|---:|---:|\n", multi ? "---:|" : "", suite == "h2" ? "---:|" : ""
    for (i = 1; i <= n; i++) {
        t = order[i]; k = t SUBSEP kind SUBSEP ""
        if (!have[k]) continue
        proxied = (t != "direct")
        h1 = h1_cpu(t)
        printf "| %s | %.0f |%s %s | %s | %s | %s |%s %s | %s | %s | %s | %d |\n", name(t), rps[k],
            multi ? sprintf(" %.0f–%.0f |", lo[k], hi[k]) : "",
            ratio(rps[k], have[d] ? rps[d] : ""), ratio(rps[k], have[h] ? rps[h] : ""),
            proxied ? sprintf("%.2f µs", cpu_us[k]) : "—",
            proxied ? ratio(cpu_us[k], have[h] ? cpu_us[h] : "") : "—",
            suite == "h2" ? " " ((proxied && h1 != "") ? sprintf("%.2f µs", h1) : "—") " |" : "",
            proxied ? sprintf("%.0f%%", core[k]) : "—",
            proxied ? mib(rss_idle[t]) " / " mib(rss_load[k]) : "—",
            lat(p50[k]), lat(p99[k]), errs[k]
    }
    print ""
}

END {
    choose()
    if (suite == "h2") {
        print "# HTTP/2 (h2load → nghttpd)"
        print ""
        printf "## Max throughput and CPU per request\n\n"
        printf "h2load -n %d -c %d -m %d (h2c, prior knowledge) for `/ok`; HAProxy with `proto h2` on both\n", h2_n, conc, streams
        print "sides. Proxies pinned to one core, h2load and nghttpd on the other. CPU per request = the"
        print "proxy's utime+stime over the run divided by the responses (both proxies for 2 hops); the"
        print "HTTP/1.1 column is the same figure from the http1 suite's saturation run (oha, mesh-echo)."
        print "Latency here is under saturation (h2load's per-request time), for orientation only."
        print ""
        throughput("max")
        nr = split(rates, rl, " ")
        for (j = 1; j <= nr; j++) {
            r = rl[j]
            d = "direct" SUBSEP "rate" SUBSEP r; h = "haproxy" SUBSEP "rate" SUBSEP r
            printf "## HTTP/2 latency at %d requests/s\n\n", r
            printf "h2load --rps %d per connection × %d connections, -m %d. h2load times a request from when it is\n", r / rate_clients, rate_clients, streams
            print "sent, not from when it was due (unlike oha --latency-correction): a stall that delays"
            print "sending is not in these figures. Added = proxied minus direct; ÷ HAProxy's compares added"
            print "latency with HAProxy's (mean / p50 / p99)."
            print ""
            printf "| target | mean | p50 | p99 | p99.9 |%s added mean | added p50 | added p99 | added p99.9 | added ÷ HAProxy's | req/s | errors | proxy core busy |\n", multi ? " p99, all runs |" : ""
            printf "|---|---:|---:|---:|---:|%s---:|---:|---:|---:|---:|---:|---:|---:|\n", multi ? "---:|" : ""
            for (i = 1; i <= n; i++) {
                t = order[i]; k = t SUBSEP "rate" SUBSEP r
                if (!have[k]) continue
                proxied = (t != "direct")
                am = a50 = a99 = a999 = "nan"
                if (have[d] && proxied) {
                    am = mean[k] - mean[d]; a50 = p50[k] - p50[d]; a99 = p99[k] - p99[d]; a999 = p999[k] - p999[d]
                }
                vs_h = "—"
                if (proxied && have[d] && have[h] && t != "haproxy")
                    vs_h = ratio(am, mean[h] - mean[d]) " / " ratio(a50, p50[h] - p50[d]) " / " ratio(a99, p99[h] - p99[d])
                printf "| %s | %s | %s | %s | %s |%s %s | %s | %s | %s | %s | %.0f | %d | %s |\n", name(t),
                    lat(mean[k]), lat(p50[k]), lat(p99[k]), lat(p999[k]),
                    multi ? sprintf(" %s – %s |", lat(lo[k]), lat(hi[k])) : "",
                    proxied ? added(am) : "—", proxied ? added(a50) : "—", proxied ? added(a99) : "—",
                    proxied ? added(a999) : "—", vs_h, rps[k], errs[k], proxied ? sprintf("%.0f%%", core[k]) : "—"
            }
            print ""
        }
    }
    if (suite == "grpc") {
        print "# Sequential unary gRPC vs HTTP/2 (one connection, one call at a time)"
        print ""
        printf "%d calls per measurement, each waiting for the previous answer. The request is an\n", calls
        printf "EchoRequest with a %d-byte message (%d bytes with the gRPC prefix); the HTTP/2 POST sends the\n", msg, msg + 7
        print "same bytes without the gRPC content-type. Servers: `echo` = mesh-echo (GET/POST answer"
        print "`ok\\n`, gRPC answers an EchoReply with the request's headers), `grpcio` = grpc_unary.py serve"
        print "(echoes the bytes). Clients: h2load -c 1 -m 1 (`h2-get`, `h2-post`, `grpc-h2load`; h2load"
        print "checks the HTTP status only, not grpc-status) and grpc_unary.py client (`grpc-py`, grpcio; a"
        print "call that does not end in OK counts as an error). Added per hop = (target − direct) ÷ hops"
        print "(2 hops: both sidecars). CPU per call = the proxies' CPU ÷ calls."
        print ""
        printf "| server:call | target | calls/s | mean | p50 | p99 |%s added per hop: mean | p50 | p99 | added ÷ HAProxy's (mean / p50) | proxy CPU per call | errors |\n", multi ? " mean, all runs |" : ""
        printf "|---|---|---:|---:|---:|---:|%s---:|---:|---:|---:|---:|---:|\n", multi ? "---:|" : ""
        for (c = 1; c <= nk; c++) {
            kind = kinds[c]
            d = "direct" SUBSEP kind SUBSEP ""; h = "haproxy" SUBSEP kind SUBSEP ""
            for (i = 1; i <= n; i++) {
                t = order[i]; k = t SUBSEP kind SUBSEP ""
                if (!have[k]) continue
                nh = hops(t)
                am = a50 = a99 = "nan"
                if (nh > 0 && have[d]) {
                    am = (mean[k] - mean[d]) / nh; a50 = (p50[k] - p50[d]) / nh; a99 = (p99[k] - p99[d]) / nh
                }
                vs_h = "—"
                if (nh > 0 && t != "haproxy" && have[d] && have[h])
                    vs_h = ratio(am, mean[h] - mean[d]) " / " ratio(a50, p50[h] - p50[d])
                printf "| %s | %s | %.0f | %s | %s | %s |%s %s | %s | %s | %s | %s | %d |\n", kind, name(t), rps[k],
                    lat(mean[k]), lat(p50[k]), lat(p99[k]),
                    multi ? sprintf(" %s – %s |", lat(lo[k]), lat(hi[k])) : "",
                    nh ? added(am) : "—", nh ? added(a50) : "—", nh ? added(a99) : "—", vs_h,
                    nh ? sprintf("%.1f µs", cpu_us[k]) : "—", errs[k]
            }
        }
        print ""
        # The defect's comparison: per-hop added mean latency, gRPC vs plain HTTP/2 on mesh-echo.
        print "## gRPC minus HTTP/2: added mean latency per hop"
        print ""
        print "| target | echo:h2-get | echo:h2-post | echo:grpc-h2load | echo:grpc-py | grpcio:grpc-h2load | grpcio:grpc-py |"
        print "|---|---:|---:|---:|---:|---:|---:|"
        nc = split("echo:h2-get echo:h2-post echo:grpc-h2load echo:grpc-py grpcio:grpc-h2load grpcio:grpc-py", cl, " ")
        for (i = 1; i <= n; i++) {
            t = order[i]; nh = hops(t)
            if (!nh) continue
            row = "| " name(t) " |"
            for (c = 1; c <= nc; c++) {
                k = t SUBSEP cl[c] SUBSEP ""; d = "direct" SUBSEP cl[c] SUBSEP ""
                row = row " " ((have[k] && have[d]) ? added((mean[k] - mean[d]) / nh) : "—") " |"
            }
            print row
        }
        print ""
    }
    if (suite == "tcp") {
        print "# Opaque TCP (redis-benchmark → redis-server)"
        print ""
        printf "redis-benchmark -c %d -n %d, no pipelining, one measurement per test. 1 hop: the proxy's inbound\n", redis_clients, redis_n
        print "listener (protocol detection; redis clients speak first) forwarding to redis. 2 hops:"
        print "transparent mode in a network namespace (iptables from `mesh-proxy init`, client sidecar as"
        print "UID 2102, its static file sends the Service address to the server sidecar's inbound port)."
        print "HAProxy: `mode tcp`. Latencies are redis-benchmark's (ms resolution of its histogram: a"
        print "coarse guide); CPU per request = the proxies' CPU ÷ requests."
        print ""
        nt = split(tests, tl, " ")
        for (j = 1; j <= nt; j++) {
            printf "## %s\n\n", toupper(tl[j])
            throughput(tl[j])
        }
    }
}
