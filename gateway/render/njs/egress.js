// owncr egress (njs >= 0.8, both engines: shared dictionaries). Every pull-through cache reaches its
// upstream through one egress server of the gateway's nginx (templates/egress.conf.j2), which gives
// Distribution's upstream calls what Distribution 3.1.1 lacks: bounded timeouts, a memory of an upstream
// that is down or rate limiting (requests in that window are answered at once, without reaching it),
// and a sign of it for the doors (a tag never mirrored answers 503, not 404, while its upstream is down).
//
// Distribution follows the token realm and blob redirects its upstream names (Docker Hub: auth.docker.io,
// its CDN). So that those calls are bounded too, the egress rewrites both URLs to point back at itself,
// signed: /_owncr/via/<kind>/<signature>/[<blob's sha256 hex>/]<scheme>/<host><path>. Only URLs an
// upstream handed out are fetched this way; the egress is no open proxy for whoever reaches its port.
//
// Every target an upstream names (a blob redirect in any Location form, a token realm) passes one check,
// checkTarget(), before the egress connects: origins the operator configured are trusted; any other must
// be a public address. A literal address in any spelling is refused when it is not; a name that is one of
// ours is refused; any other name is resolved by nginx as it connects, and the address it connected to is
// checked before a byte of the answer is relayed (answered(), verified()): nginx connects to the address
// it resolved, once, so DNS cannot hand it another after the check.
//
// A blob's bytes are checked against its digest as they pass (verified(), on the upstream's own blob
// path and on a redirected download alike): a body that does not match is cut short by its last chunk,
// so the cache never stores it and no door keeps it (nginx keeps no body that arrived short).
import crypto from 'crypto';
import owncr from 'owncr.js';
import store from 'store.js';

var N = owncr.names;
var E = N.egress;
// Failure memory, per what failed: the upstream's id (its own origin and its token realm: without
// tokens nothing can be pulled) or a redirect's target host ('target:<host>', a CDN) -> "<until
// ms>,<status>" (status: 429 rate limit, 503 down). Each node keeps its own in this dictionary and
// publishes what it learns of an upstream to the store (store.js), under upstreams/<id>: a cache reaches
// the egress of any node, so the node whose door answers a miss may not be the one that saw the upstream
// fail (docs/architecture.md, "How nodes agree"). A failed download host only spares this node's egress
// the wait: one dead CDN host must not mark the whole upstream down, and the doors' answers follow the
// upstream's state alone.
var MEMORY = 'owncr_upstreams';
var TARGET = 'target:';
// Beside it, each upstream's last token challenge (the WWW-Authenticate of its answer to a ping), kept in
// the store as challenges/<id> too.
var CHALLENGE = 'challenge:';
var RETRY_AFTER_DEFAULT = 60;
// A rate-limit window longer than this is cut short: one request then finds out whether it still holds.
var RETRY_AFTER_MAX = 600;
// The upstream's own paths and the token realm answer small documents quickly; blobs and redirected
// downloads stream (egress.conf.j2 gives each its read timeout).
var VIA_PREFIX = owncr.internal(N.routes.via, '/');
var VIA = new RegExp('^' + VIA_PREFIX + '(' + E.realm + '|' + E.redirect + ')'
    + '/([0-9a-f]{32})/(?:([0-9a-f]{64})/)?(https?)/([^/?]+)(/[^?]*)?(\\?.*)?$');
// A blob on the upstream's own path: the digest its bytes must have. Only sha256 is checked (what njs's
// crypto offers, and every public registry's digest); a door keeps no other blob (gateway/names.py
// CHECKED_BLOB, nginx.conf.j2).
var BLOB = new RegExp(N.checkedBlob);

// -- the target check --------------------------------------------------------------------------------

// An IPv4 literal as inet_aton reads one (and so some resolvers and clients): 1 to 4 parts, each decimal,
// 0x-hexadecimal or 0-octal, the last filling the bytes left: "2130706433", "0177.0.0.1" and "127.1" are
// all 127.0.0.1. The four bytes, or null when `host` is no such literal.
function ipv4(host) {
    var parts = host.split('.');
    if (parts.length > 4) {
        return null;
    }
    var nums = [];
    for (var i = 0; i < parts.length; i++) {
        var p = parts[i];
        if (owncr.whole(/^(0x[0-9a-f]*|0[0-7]*|[1-9][0-9]*)$/i, p) === null) {
            return null;
        }
        nums.push(/^0x/i.test(p) ? parseInt(p.slice(2) || '0', 16) : p[0] === '0' ? parseInt(p, 8) : Number(p));
    }
    var last = nums.pop();
    var room = Math.pow(256, 4 - nums.length);
    if (nums.some(function (n) { return n > 255; }) || last >= room) {
        return null;
    }
    for (var k = 3 - nums.length; k >= 0; k--) {
        nums.push(Math.floor(last / Math.pow(256, k)) % 256);
    }
    return nums;
}

// Not a public IPv4 address: this host, private, shared (CGN), link-local (the cloud's metadata),
// documentation, benchmarking, multicast, reserved.
var NOT_PUBLIC_V4 = [[0, 8], [10, 8], [100, 64, 10], [127, 8], [169, 254, 16], [172, 16, 12], [192, 0, 0, 24],
    [192, 0, 2, 24], [192, 168, 16], [198, 18, 15], [198, 51, 100, 24], [203, 0, 113, 24], [224, 4], [240, 4]];

function publicV4(b) {
    var n = ((b[0] * 256 + b[1]) * 256 + b[2]) * 256 + b[3];
    return !NOT_PUBLIC_V4.some(function (net) {
        var bits = net[net.length - 1];
        var base = 0;
        for (var i = 0; i < 4; i++) {
            base = base * 256 + (i < net.length - 1 ? net[i] : 0);
        }
        var size = Math.pow(2, 32 - bits);
        return Math.floor(n / size) === Math.floor(base / size);
    });
}

// An IPv6 literal (without brackets) is public only as global unicast (2000::/3), less 6to4 (2002::/16,
// which embeds an IPv4 address) and documentation (2001:db8::/32): loopback, unspecified, unique-local,
// link-local, multicast, IPv4-mapped (::ffff:127.0.0.1) and NAT64 forms all fall outside.
function publicV6(host) {
    var first = owncr.whole(/^([0-9a-f]{1,4}):([0-9a-f]{1,4}):[0-9a-f:.]*$/i, host);
    if (first === null) {
        return false;
    }
    var a = parseInt(first[1], 16);
    var b = parseInt(first[2], 16);
    return a >= 0x2000 && a <= 0x3fff && a !== 0x2002 && !(a === 0x2001 && b === 0xdb8);
}

// The gateway's own names: one label (a Swarm service, `localhost`), or a suffix private networks use.
var OURS = /(^[^.]*$|^tasks\.|\.(localhost|local|internal|lan|home\.arpa)$)/i;

// An origin the operator configured (every upstream's, egress.conf.j2): followed wherever it is.
function trusted(r, host, port) {
    return (' ' + r.variables.owncr_egress_trusted + ' ').indexOf(' ' + host + ':' + port + ' ') >= 0;
}

// The port a URL without one names, as the trusted origins are written (gateway/names.py origin_key).
function defaultPort(scheme) {
    return scheme.toLowerCase() === 'https' ? 443 : 80;
}

// Logged for every target refused, before or after connecting.
function logRefused(r, url, why) {
    r.error('egress: refused ' + url + ' (an upstream named it): ' + why);
}

// Whether the gateway may follow `url` (an upstream's word): null when it may, else why not. A target
// let through is checked again on the address nginx connects to (checkConnected): a name's, and a
// literal's too, as nginx may read a literal otherwise than here (it takes 010.0.0.1 for 10.0.0.1).
function checkTarget(r, url) {
    var m = owncr.whole(/^(https?):\/\/([^/?#]*)([/?#].*)?$/i, url);
    if (m === null) {
        return 'not an http(s) URL';
    }
    if (m[2].indexOf('@') >= 0) {
        return 'a URL with user information';
    }
    var hp = owncr.whole(/^(\[[0-9a-f:.]+\]|[^:\[\]]+)(?::([0-9]{1,5}))?$/i, m[2].toLowerCase());
    if (hp === null) {
        return 'not a host';
    }
    var host = hp[1].replace(/\.$/, '');
    if (trusted(r, host, hp[2] ? Number(hp[2]) : defaultPort(m[1]))) {
        return null;
    }
    r.variables.owncr_egress_connect = '1';
    if (host[0] === '[') {
        return publicV6(host.slice(1, -1)) ? null : 'an IPv6 address that is not public';
    }
    var v4 = ipv4(host);
    if (v4 !== null) {
        return publicV4(v4) ? null : 'an IPv4 address that is not public';
    }
    if (owncr.whole(/^[a-z0-9-]+(\.[a-z0-9-]+)*$/, host) === null || OURS.test(host)) {
        return 'a name of this network';
    }
    return null;
}

// A token request carries the upstream login: only to a configured origin or the upstream's own domain
// (its last two labels: auth.docker.io for registry-1.docker.io), as Distribution itself allows realms.
function loginMayGo(r, scheme, hostport) {
    var hp = /^(.*?)(?::([0-9]+))?$/.exec(hostport.toLowerCase());
    var host = hp[1];
    var upstream = /^https?:\/\/([^/:]+)/i.exec(r.variables.owncr_egress_origin);
    var domain = function (h) { return h.split('.').slice(-2).join('.'); };
    return trusted(r, host, hp[2] || defaultPort(scheme))
        || (upstream !== null && host.indexOf('.') > 0 && domain(host) === domain(upstream[1].toLowerCase()));
}

// The address nginx connected to for a name checkTarget() let through, checked before the answer is
// relayed: null when public, else why not.
function checkConnected(r) {
    if (r.variables.owncr_egress_connect !== '1') {
        return null;
    }
    var addr = String(r.variables.upstream_addr || '').split(', ').pop();
    var v6 = owncr.whole(/^\[([0-9a-f:.]+)\]:[0-9]+$/i, addr);
    var v4 = owncr.whole(/^([0-9.]+):[0-9]+$/, addr);
    var bytes = v4 === null ? null : ipv4(v4[1]);
    if (v6 !== null ? publicV6(v6[1]) : bytes !== null && publicV4(bytes)) {
        return null;
    }
    return 'resolved to ' + (addr || 'no address');
}

// An error answer (an error page's content handler) from a target refused at connect time: nothing of it
// is relayed, nor remembered.
function inside(r) {
    var why = checkConnected(r);
    if (why !== null) {
        logRefused(r, r.variables.owncr_egress_url, why);
    }
    return why !== null;
}

// The answer of a target refused at connect time: an upstream error, with nothing of what came back.
function refuse(r, url, why) {
    logRefused(r, url, why);
    r.variables.owncr_egress_refused = '1';
    r.status = 502;
    ['Location', 'WWW-Authenticate', 'Content-Length', 'Content-Type', 'Docker-Content-Digest', 'ETag',
        'Content-Range'].forEach(function (h) { delete r.headersOut[h]; });
}

// "<until ms>,<status>" -> {seconds left, status}, or null once passed (or not one of ours).
function state(value) {
    var m = owncr.whole(/^(\d{1,15}),(429|503)$/, String(value || ''));
    var left = m === null ? 0 : Number(m[1]) - Date.now();
    return left > 0 ? {seconds: Math.ceil(left / 1000), status: m[2], value: m[0]} : null;
}

function remembered(id) {
    return state(ngx.shared[MEMORY].get(id));
}

// Keep `value` on this node under `local` and, for the other nodes, in the store under `stored`; if the
// store cannot be written, they learn it from their own requests.
async function keep(r, local, stored, value) {
    ngx.shared[MEMORY].set(local, value);
    try {
        await store.put(r, stored, value);
    } catch (e) {
        r.error('' + e);
    }
}

// What some node kept under `stored` (and this node now remembers under `local` too), or null; if the
// store cannot be read, this node's own memory is all there is.
async function recall(r, local, stored) {
    try {
        var text = await store.read(r, stored);
        if (text !== null) {
            ngx.shared[MEMORY].set(local, text);
        }
        return text;
    } catch (e) {
        r.error('' + e);
        return null;
    }
}

// What some node published about this upstream's failures, or null.
async function published(r, id) {
    return state(await recall(r, id, 'upstreams/' + id));
}

function signature(r, kind, hex, origin, path) {
    return crypto.createHmac('sha256', r.variables.owncr_auth_salt)
        .update('owncr-egress\n' + kind + '\n' + hex + '\n' + origin + path).digest('hex').slice(0, 32);
}

// What a cache asked its upstream for, for metrics.js ($owncr_kind): its own paths, the token realm,
// a redirected download.
function upstreamKind(uri) {
    if (uri.indexOf('/blobs/') >= 0) {
        return 'blob';
    }
    if (uri.indexOf('/manifests/') >= 0) {
        return 'manifest';
    }
    return uri.indexOf('/tags/') >= 0 ? 'tags' : 'ping';
}

// Where a request goes, unless what it would reach (`memory`: a failure memory's key) is remembered as
// failing: then answered from that memory at once.
function route(r, memory, where, url, authorization, kind) {
    r.variables.owncr_kind = kind;
    r.variables.owncr_egress_memory = memory;
    var down = remembered(memory);
    if (down !== null) {
        r.variables.owncr_egress_retry = String(down.seconds);
        // A cache's ping gets the upstream's last challenge (see failed()), when this node knows it.
        var challenge = kind === 'ping' ? ngx.shared[MEMORY].get(CHALLENGE + memory) : null;
        if (challenge) {
            r.variables.owncr_egress_challenge = viaRealm(r, String(challenge));
            return owncr.egress(E.challenged[down.status]);
        }
        return owncr.egress(E.remembered[down.status]);
    }
    r.variables.owncr_egress_url = url;
    r.variables.owncr_egress_authorization = authorization;
    return owncr.egress(where);
}

// js_set $owncr_egress_next (rewrite phase): where this request of a cache goes.
function next(r) {
    var id = r.variables.owncr_upstream;
    var uri = r.variables.request_uri;
    var auth = r.headersIn.Authorization || '';
    if (uri.indexOf(VIA_PREFIX) !== 0) {
        var kind = uri === '/v2/' || uri === '/v2' ? 'ping' : upstreamKind(uri);
        var where = kind === 'ping' ? E.ping : kind === 'blob' ? E.stream : E.answer;
        var blob = kind === 'blob' ? BLOB.exec(r.variables.uri) : null;
        r.variables.owncr_egress_digest = blob === null ? '' : blob[1];
        return route(r, id, where, r.variables.owncr_egress_origin + uri, auth, kind);
    }
    var m = owncr.whole(VIA, uri);
    var hex = m === null ? '' : m[3] || '';
    var origin = m === null ? '' : m[4] + '://' + m[5];
    var path = m === null ? '' : m[6] || '';
    if (m === null || m[2] !== signature(r, m[1], hex, origin, path)) {
        return owncr.egress(E.forged);
    }
    r.variables.owncr_egress_digest = hex;
    var url = origin + path + (m[7] || '');
    var why = checkTarget(r, url);
    if (why === null && m[1] === E.realm && !loginMayGo(r, m[4], m[5])) {
        why = 'a token realm outside the upstream\'s domain (it would get the upstream login)';
    }
    if (why !== null) {
        logRefused(r, url, why);
        return owncr.egress(E.inside);
    }
    // A token request carries the cache's upstream login; a redirected download is signed by its URL
    // (presigned) and must not carry the upstream's token to another host.
    return m[1] === E.realm
        ? route(r, id, E.answer, url, auth, 'token')
        : route(r, TARGET + m[5].toLowerCase(), E.stream, url, '', 'download');
}

// `url` on the egress, signed; a blob's redirect carries the digest its bytes must have (`hex`).
function via(r, kind, url, hex) {
    var m = owncr.whole(/^(https?):\/\/([^/?]+)(\/[^?]*)?(\?.*)?$/i, url);
    if (m === null) {
        return url;
    }
    var scheme = m[1].toLowerCase();
    var path = m[3] || '';
    var sig = signature(r, kind, hex, scheme + '://' + m[2], path);
    return 'http://' + r.variables.http_host + VIA_PREFIX + kind + '/' + sig + '/' + (hex ? hex + '/' : '')
        + scheme + '/' + m[2] + path + (m[4] || '');
}

function retryAfter(value) {
    var seconds = Number(value);
    if (!value || isNaN(seconds)) {
        // An HTTP date, or nothing at all.
        var date = Date.parse(value || '');
        seconds = isNaN(date) ? RETRY_AFTER_DEFAULT : Math.ceil((date - Date.now()) / 1000);
    }
    return Math.min(Math.max(Math.ceil(seconds), 1), RETRY_AFTER_MAX);
}

// js_content of an upstream's failure (error_page of the proxied locations: its 429, 502, 503, 504 and
// nginx's own 502/504 after a refused connection or a timeout): remember a rate limit or an outage, on
// this node and in the store, before the cache hears of it, then pass the status on.
async function failed(r) {
    if (inside(r)) {
        return r.return(502);
    }
    var id = r.variables.owncr_upstream;
    var statuses = String(r.variables.upstream_status || '').split(/[,:] */);
    var status = Number(statuses[statuses.length - 1]) || 502;
    var given = r.variables.upstream_http_retry_after;
    var seconds = status === 429 || given ? retryAfter(given)
        : Number(r.variables.owncr_egress_down_seconds);
    var value = (Date.now() + seconds * 1000) + ',' + (status === 429 ? 429 : 503);
    var memory = r.variables.owncr_egress_memory;
    if (memory !== id) {
        // A download host: remembered here only (see MEMORY).
        ngx.shared[MEMORY].set(memory, value);
        r.headersOut['Retry-After'] = String(seconds);
        return r.return(status);
    }
    await keep(r, id, 'upstreams/' + id, value);
    // A cache's ping: Distribution reads the token realm its upstream login is for from the answer to
    // the ping it sends as it starts, once; a failure there would leave it pulling anonymously until it
    // restarts. It gets the upstream's last challenge instead, kept by whichever node saw it (loaded
    // now, so that pings answered from this node's memory get it too).
    var challenge = await lastChallenge(r, id);
    if (challenge && r.variables.owncr_kind === 'ping') {
        return answerChallenge(r, challenge);
    }
    r.headersOut['Retry-After'] = String(seconds);
    r.return(status);
}

// The upstream's last token challenge (its WWW-Authenticate to a ping), from this node or the store.
async function lastChallenge(r, id) {
    var known = ngx.shared[MEMORY].get(CHALLENGE + id);
    return known ? String(known) : recall(r, CHALLENGE + id, 'challenges/' + id);
}

function answerChallenge(r, challenge) {
    r.headersOut['WWW-Authenticate'] = viaRealm(r, challenge);
    r.return(401);
}

// js_content of an upstream's 401 to a cache's ping: keep its challenge (this node, and the store when it
// changed), then pass it on with the realm on the egress.
async function challenged(r) {
    var id = r.variables.owncr_upstream;
    var challenge = r.variables.upstream_http_www_authenticate || '';
    if (challenge && ngx.shared[MEMORY].get(CHALLENGE + id) !== challenge) {
        await keep(r, CHALLENGE + id, 'challenges/' + id, challenge);
    }
    if (!challenge) {
        return r.return(401);
    }
    answerChallenge(r, challenge);
}

// js_content of an upstream's 401 to anything but a ping. To a repository request, made with the token
// its realm gave for that repository, it says the upstream does not know the name or will not show it
// (Docker Hub answers so for both): that is a registry's "unknown", as a 404 tells the cache, so that
// the mirror door answers such a name exactly as it answers a private one (router.js). A token or a
// download refused (a wrong upstream login) is passed on.
function unauthorized(r) {
    if (inside(r)) {
        return r.return(502);
    }
    var unknown = {manifest: 'manifest_unknown', blob: 'blob_unknown', tags: 'name_unknown'};
    var kind = r.variables.owncr_kind;
    if (owncr.own(unknown, kind)) {
        r.headersOut['Content-Type'] = 'application/json';
        return r.return(404, owncr.error(unknown[kind]));
    }
    var challenge = r.variables.upstream_http_www_authenticate;
    if (challenge) {
        r.headersOut['WWW-Authenticate'] = viaRealm(r, challenge);
    }
    r.return(401);
}

function viaRealm(r, challenge) {
    return challenge.replace(/realm="([^"]+)"/i, function (all, url) {
        return 'realm="' + via(r, E.realm, url, '') + '"';
    });
}

// A Location in any form, made absolute against the URL that was asked (RFC 3986's reference
// resolution for the forms registries send): absolute, scheme-relative (//host/...), path-absolute and
// relative (on the same origin). Anything else is passed as it is (and refused by checkTarget).
function absolute(base, location) {
    if (/^[a-z][a-z0-9+.-]*:/i.test(location)) {
        return location;
    }
    var b = /^([a-z]+:)(\/\/[^/?#]*)([^?#]*)/i.exec(base);
    if (b === null) {
        return location;
    }
    if (location.indexOf('//') === 0) {
        return b[1] + location;
    }
    if (location[0] === '/') {
        return b[1] + b[2] + location;
    }
    return b[1] + b[2] + b[3].replace(/[^/]*$/, '') + location;
}

// js_header_filter of the proxied locations: an answer from a target whose address is not public is
// refused (nothing of it relayed); follow-up URLs (token realm, redirects, in every form) stay on the
// egress, where each is checked when followed.
function answered(r) {
    var why = checkConnected(r);
    if (why !== null) {
        return refuse(r, r.variables.owncr_egress_url, why);
    }
    var challenge = r.headersOut['WWW-Authenticate'];
    if (challenge) {
        r.headersOut['WWW-Authenticate'] = viaRealm(r, challenge);
    }
    var location = r.headersOut.Location;
    if (location) {
        var target = absolute(r.variables.owncr_egress_url, location);
        var signed = via(r, E.redirect, target, r.variables.owncr_egress_digest);
        if (signed === target) {  // not an http(s) URL: the cache would follow it past the egress
            return refuse(r, target, 'not an http(s) URL');
        }
        r.headersOut.Location = signed;
    }
}

// This request's check, in the body filter's module state: a QuickJS context serves one request at a
// time, and the filter's first call (marked in a request variable) starts it afresh.
var checking = null;

// js_body_filter of the stream location (under QuickJS, which frees each chunk once passed on: the njs
// engine keeps every chunk of a request until it ends, measured 900 MB for a 300 MB blob). A blob's
// complete answer passes with its last chunk held back until the bytes are known to have the digest;
// a body that does not is cut short by that chunk and logged, so what the cache streamed is never
// stored (Distribution verifies before it commits; a door keeps no body that arrived short). A client
// that was streamed the start of it sees its download cut off; no later one receives it.
function verified(r, data, flags) {
    if (r.variables.owncr_egress_refused === '1') {
        return flags.last ? r.sendBuffer('', {last: true}) : undefined;
    }
    var hex = r.variables.owncr_egress_digest;
    if (!hex || r.method !== 'GET' || r.status !== 200 || r.headersIn.Range !== undefined) {
        return r.sendBuffer(data, flags);
    }
    if (r.variables.owncr_egress_checking !== '1') {
        r.variables.owncr_egress_checking = '1';
        checking = {hash: crypto.createHash('sha256'), held: null};
    }
    if (data.length) {
        checking.hash.update(data);
        if (checking.held !== null) {
            r.sendBuffer(checking.held);
        }
        checking.held = Buffer.from(data);  // a copy: nginx reuses the buffer it passed
    }
    if (flags.last) {
        var got = checking.hash.digest('hex');
        var held = checking.held;
        checking = null;
        if (got !== hex) {
            r.error('egress: the answer to ' + r.variables.owncr_egress_url + ' is not sha256:' + hex
                + ' (it is sha256:' + got + '): cut short');
            return r.sendBuffer('', {last: true});
        }
        r.sendBuffer(held === null ? '' : held, {last: true});
    }
}

// js_content of a door's answer to what a cache did not have (404) or failed to fetch (500;
// $owncr_miss_status): while the upstream is down or rate limiting, as this node or any other (the store)
// has seen, that is "not mirrored yet", which clients retry (503 + Retry-After); otherwise the usual answer.
async function missed(r) {
    var id = owncr.upstreamOf(r);
    var down = id === null ? null : remembered(id) || await published(r, id);
    r.headersOut['Content-Type'] = 'application/json';
    if (down !== null) {
        r.headersOut['Retry-After'] = String(down.seconds);
        return r.return(503, owncr.error('not_mirrored'));
    }
    var status = Number(r.variables.owncr_miss_status);
    r.return(status, status === 404 ? r.variables.owncr_error : owncr.error('backend_failed'));
}

// js_set $owncr_upstream_states (the metrics server): JSON {<upstream id>: {seconds, status}} of every upstream
// remembered as down or rate limiting now.
function upstreamStates(r) {
    var states = {};
    ngx.shared[MEMORY].keys(1000).forEach(function (id) {
        var down = owncr.own(N.upstreams, id) ? remembered(id) : null;
        if (down !== null) {
            states[id] = down;
        }
    });
    return JSON.stringify(states);
}

export default {next, failed, challenged, unauthorized, answered, verified, missed, upstreamStates};
