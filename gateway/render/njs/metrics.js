// owncr metrics (njs >= 0.8, both engines: shared dictionaries of numbers). Every request the doors and the
// egress servers log is counted once, as its access log line is written: the log format references
// $owncr_counted (js_set metrics.count), and at that point the status, the cache status and the byte counts
// are final. The metrics server (templates/metrics.conf.j2) serves the totals in Prometheus text format on
// an address the load balancer never forwards.
//
// Each counter is kept under its own sample text (`name{label="value",...}`), so serving is a listing.
// Label values come only from the gateway's own vocabulary (doors, route ids, nginx's cache statuses, the
// three digits of a status), never from a request's path or headers: a client cannot grow the series.
// Which upstream a request concerns and what of it ($owncr_upstream, $owncr_kind) router.js and egress.js
// decide and hand over; an upstream's host label is its entry in names.js.
import owncr from 'owncr.js';

var N = owncr.names;

var COUNTERS = 'owncr_metrics';
var MAX_SERIES = 100000; // more than the zone can hold: every series is listed

var HELP = [
    ['owncr_requests_total', 'counter', 'Requests answered, by door (registry, mirror, egress; none: no door, '
        + 'e.g. a port probe) and status.'],
    ['owncr_received_bytes_total', 'counter', 'Bytes received from clients (request line, headers, body), by door.'],
    ['owncr_sent_bytes_total', 'counter', 'Bytes sent to clients, by door (egress: sent to the caches).'],
    ['owncr_mirror_requests_total', 'counter', 'Requests for upstream content on either door, by upstream, kind '
        + '(blob, manifest, tags) and nginx cache result (hit, miss, updating, stale, expired, bypass; none: '
        + 'not an nginx-cached route, answered by the pull-through cache).'],
    ['owncr_upstream_requests_total', 'counter', 'Requests that reached an upstream, by upstream, kind '
        + '(blob, download: a blob redirected to a CDN, manifest, tags, token, ping), method and status '
        + '(429: rate limited; 502: unreachable; 504: timed out).'],
    ['owncr_upstream_received_bytes_total', 'counter', 'Bytes received from an upstream, by upstream.'],
    ['owncr_upstream_spared_total', 'counter', 'Requests of a cache answered by the egress without asking the '
        + 'upstream, because it is remembered as rate limiting or down.'],
    ['owncr_upstream_unavailable', 'gauge', '1 while the egress remembers the upstream as rate limiting or '
        + 'down (reason), else 0.'],
    ['owncr_upstream_retry_after_seconds', 'gauge', 'Seconds until the egress asks the upstream again (0: '
        + 'it asks now).'],
];

function add(name, labels, value) {
    if (!(value > 0)) {
        return;
    }
    var text = Object.keys(labels).map(function (k) { return k + '="' + labels[k] + '"'; }).join(',');
    ngx.shared[COUNTERS].incr(name + '{' + text + '}', value, 0);
}

function sum(list) {
    // $upstream_bytes_received lists each attempt ("512, 1024"; "-" for none).
    return (list || '').split(/[,:]/).reduce(function (total, n) {
        var v = Number(n);
        return isNaN(v) ? total : total + v;
    }, 0);
}

var STATUS = /^[1-5][0-9][0-9]$/;
var ASKED = [owncr.egress(N.egress.answer), owncr.egress(N.egress.ping), owncr.egress(N.egress.stream)];
// The egress's answers from memory (a remembered status, or a ping's remembered challenge), by reason.
var SPARED = {};
[N.egress.remembered, N.egress.challenged].forEach(function (outcomes) {
    SPARED[owncr.egress(outcomes['429'])] = 'rate_limited';
    SPARED[owncr.egress(outcomes['503'])] = 'down';
});

function record(r) {
    var v = r.variables;
    // Neither door's name nor /healthz (a port probe, a request no server_name matched): "none".
    var door = v.owncr_door || 'none';
    var status = owncr.whole(STATUS, v.status) !== null ? v.status : 'other';
    add('owncr_requests_total', {door: door, status: status}, 1);
    add('owncr_received_bytes_total', {door: door}, Number(v.request_length));
    add('owncr_sent_bytes_total', {door: door}, Number(v.bytes_sent));
    var id = owncr.upstreamOf(r);
    var host = id === null ? undefined : N.upstreams[id].host;
    if (door === 'egress') {
        if (owncr.own(SPARED, r.uri)) {
            add('owncr_upstream_spared_total', {upstream: host, reason: SPARED[r.uri]}, 1);
        } else if (ASKED.indexOf(r.uri) >= 0) {
            var method = v.request_method === 'GET' || v.request_method === 'HEAD' ? v.request_method : 'other';
            add('owncr_upstream_requests_total', {upstream: host, kind: v.owncr_kind, method: method, status: status}, 1);
            add('owncr_upstream_received_bytes_total', {upstream: host}, sum(v.upstream_bytes_received));
        }
        return;
    }
    if (host !== undefined) {
        var cache = (v.upstream_cache_status || 'none').toLowerCase();
        add('owncr_mirror_requests_total', {upstream: host, kind: v.owncr_kind, cache: cache}, 1);
    }
}

// js_set $owncr_counted, referenced by the access log format only: evaluated once per logged request.
function count(r) {
    try {
        record(r);
    } catch (e) {
        // The zone is full (nginx.conf.j2 gives its size): the request is served and logged all the same;
        // nginx's error log says why a count is missing.
        r.error('owncr metrics: ' + e.message);
    }
    return '';
}

// The gauges, from egress.js's memory at scrape time ($owncr_upstream_states): name -> sample lines.
function gauges(r) {
    var states = JSON.parse(r.variables.owncr_upstream_states || '{}');
    var out = {owncr_upstream_unavailable: [], owncr_upstream_retry_after_seconds: []};
    Object.keys(N.upstreams).sort().forEach(function (id) {
        var state = states[id] || {seconds: 0, status: ''};
        var host = 'upstream="' + N.upstreams[id].host + '"';
        ['rate_limited', 'down'].forEach(function (reason) {
            var now = state.seconds > 0 && (state.status === '429') === (reason === 'rate_limited') ? 1 : 0;
            out.owncr_upstream_unavailable.push('owncr_upstream_unavailable{' + host + ',reason="' + reason
                + '"} ' + now);
        });
        out.owncr_upstream_retry_after_seconds.push('owncr_upstream_retry_after_seconds{' + host + '} '
            + state.seconds);
    });
    return out;
}

// js_content of GET /metrics on the metrics server: each family's HELP and TYPE, then its samples.
function serve(r) {
    var samples = ngx.shared[COUNTERS].items(MAX_SERIES).map(function (s) { return s[0] + ' ' + s[1]; }).sort();
    var current = gauges(r);
    var lines = [];
    HELP.forEach(function (h) {
        lines.push('# HELP ' + h[0] + ' ' + h[2]);
        lines.push('# TYPE ' + h[0] + ' ' + h[1]);
        var family = current[h[0]] || samples.filter(function (s) { return s.indexOf(h[0] + '{') === 0; });
        Array.prototype.push.apply(lines, family);
    });
    r.headersOut['Content-Type'] = 'text/plain; version=0.0.4; charset=utf-8';
    r.return(200, lines.join('\n') + '\n');
}

export default {count, serve};
