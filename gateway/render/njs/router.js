// owncr gateway router (njs 1.0, both engines; still 0.7.9-compatible). Decides, per request, which registry answers it, from
// the generated routes.json (private namespaces, each user's rights, upstream hosts). Each door's
// `js_set` function returns an internal URI (/_owncr/<route><uri>) that nginx rewrites to; the target
// location authenticates (registry door) and proxies to a registry, or to nginx's own loopback server
// for the ping and for refusals (the OCI error body travels in $owncr_error).
// Why js_set and not js_content: js_content reads the whole request body before it runs (to disk for
// large layers); the rewrite phase never touches the body, so pushes stream to the registry.
// Routing contract: docs/architecture.md (and its model, tests/gateway/routing_model.py). Route names,
// upstream ids and error answers come from owncr.js (gateway/names.py).
import fs from 'fs';
import crypto from 'crypto';
import owncr from 'owncr.js';

var N = owncr.names;

var routesCache = null;
var NO_RIGHTS = {pull: [], push: []};

function routes(r) {
    // Parsed once per VM; njs clones its VM per request, so this is cheap but not shared.
    if (routesCache === null) {
        routesCache = JSON.parse(fs.readFileSync(r.variables.owncr_routes_file));
    }
    return routesCache;
}

// /v2/<name>/<what>: the name is everything before the last endpoint suffix (names may contain "/").
// References, digests and upload ids are restricted to the characters they can have: the URI is passed
// on decoded, so nothing here may smuggle in a '?', '%' or '/'.
var ENDPOINT = /^\/v2\/(.+?)\/(manifests\/([\w.:+=-]+)|blobs\/uploads\/?[\w.=-]*|blobs\/[\w.:+=-]+|tags\/list|referrers\/[\w.:+=-]+)$/;
// Distribution's repository-name grammar, one path component (gateway/config.py NAME_COMPONENT).
var COMPONENT = new RegExp(N.nameComponent);

function parse(uri) {
    var m = owncr.whole(ENDPOINT, uri);
    if (m === null || !m[1].split('/').every(function (c) { return owncr.whole(COMPONENT, c) !== null; })) {
        return null;
    }
    var ref = m[3];
    return {
        name: m[1],
        rest: m[2],
        upload: m[2].indexOf('blobs/uploads') === 0,
        tag: ref !== undefined && ref.indexOf(':') < 0,
    };
}

function privateNamespace(cfg, name) {
    for (var i = 0; i < cfg.namespaces.length; i++) {
        var ns = cfg.namespaces[i];
        if (name === ns || name.indexOf(ns + '/') === 0) {
            return ns;
        }
    }
    return null;
}

function isRead(r) {
    return r.method === 'GET' || r.method === 'HEAD';
}

function fail(r, status, code, message, detail) {
    r.variables.owncr_route = N.routes.refused;
    r.variables.owncr_error = owncr.errorBody(code, message, detail);
    return owncr.answer(status);
}

// The mirror door's one answer for "not here", whether the name is private (never asked upstream) or
// unknown upstream (the cache's 404, replaced with this by the door): nothing tells the two apart.
function notFound(p) {
    if (p.rest.indexOf('manifests/') === 0) {
        return owncr.error('manifest_unknown');
    }
    if (p.rest.indexOf('blobs/') === 0) {
        return owncr.error('blob_unknown');
    }
    return owncr.error('name_unknown');
}

function go(r, route, uri) {
    // Backends get the normalized URI nginx matched on (no '..' or '%2F' tricks reach a registry).
    r.variables.owncr_route = route;
    return owncr.internal(route, uri);
}

function ping(r) {
    r.variables.owncr_route = N.routes.ping;
    return owncr.answer(N.routes.ping);
}

// The upstream and what is asked of it go to egress.js and metrics.js in $owncr_upstream and
// $owncr_kind: no module reads them back out of a route name.
// The upstream a mirrored name is asked of, and the name as its cache stores it: Docker Hub at the root,
// any other upstream under /v2/<host>/..., stripped before its cache. What the door answers if the cache
// has no such thing goes with it (routes.conf.j2).
function mirrored(r, p) {
    var slash = p.name.indexOf('/');
    var id = N.hub;
    var name = p.name;
    if (slash > 0 && owncr.own(N.upstreamIds, p.name.slice(0, slash))) {
        id = N.upstreamIds[p.name.slice(0, slash)];
        name = p.name.slice(slash + 1);
    }
    r.variables.owncr_upstream = id;
    r.variables.owncr_error = notFound(p);
    return {id: id, name: name};
}

function toCache(r, p) {
    var m = mirrored(r, p);
    r.variables.owncr_kind = upstreamKind(p);
    r.variables.owncr_repository = m.name;  // as the cache stores it (pulls.js records it)
    return go(r, N.upstreams[m.id].routes[cacheVariant(p)], '/v2/' + m.name + '/' + p.rest);
}

// Tag manifests are micro-cached, blobs coalesced (routes.conf.j2); manifests by digest and tag lists
// go straight to the cache.
function cacheVariant(p) {
    if (p.tag) {
        return 'tag';
    }
    return p.rest.indexOf('blobs/') === 0 ? 'blob' : 'plain';
}

function upstreamKind(p) {
    if (p.rest.indexOf('blobs/') === 0) {
        return 'blob';
    }
    return p.rest.indexOf('manifests/') === 0 ? 'manifest' : 'tags';
}

// The repositories a cross-repository blob mount (`POST .../blobs/uploads/?mount=<digest>&from=<repo>`)
// would copy from, decoded the way Distribution's Go url.Query() decodes them ('+' and %XX, in keys too).
// Mounting links the blob into the target repository, where the pusher can then read it: so `from`
// needs a pull right like any read (Distribution's own token auth asks for pull scope on it as well).
// null when the query cannot be decoded.
function mountSources(r) {
    var sources = [];
    var args = r.variables.args;
    if (!args) {
        return sources;
    }
    var pairs = args.split(/[&;]/);
    for (var i = 0; i < pairs.length; i++) {
        var eq = pairs[i].indexOf('=');
        var key = eq < 0 ? pairs[i] : pairs[i].slice(0, eq);
        var value = eq < 0 ? '' : pairs[i].slice(eq + 1);
        try {
            key = decodeURIComponent(key.replace(/\+/g, ' '));
            value = decodeURIComponent(value.replace(/\+/g, ' '));
        } catch (e) {
            return null;
        }
        if (key === 'from') {
            sources.push(value);
        }
    }
    return sources;
}

function deniedMount(r, cfg, user, rights) {
    // A mount from a repository this user may not pull is refused; one from a non-private name is
    // harmless (the private registry holds no such repository, so Distribution starts a plain upload).
    var sources = mountSources(r);
    if (sources === null) {
        return fail(r, 400, 'UNSUPPORTED', 'query string cannot be decoded');
    }
    for (var i = 0; i < sources.length; i++) {
        var from = privateNamespace(cfg, sources[i]);
        if (from !== null && rights.pull.indexOf(from) < 0) {
            return fail(r, 403, 'DENIED', user + ' may not mount blobs from ' + sources[i],
                {from: sources[i], pull: rights.pull});
        }
    }
    return null;
}

// Go's Request.FormValue, which Distribution uses for `mount`, `from` and `digest`, also reads them from
// a form-encoded or multipart body, where this router cannot see them. No registry client sends a form:
// refuse those media types outright (mime.ParseMediaType: case-insensitive, parameters after ';').
var FORM_TYPES = ['application/x-www-form-urlencoded', 'multipart/form-data'];

function formBody(r) {
    var raw = r.rawHeadersIn;
    for (var i = 0; i < raw.length; i++) {
        if (raw[i][0].toLowerCase() === 'content-type') {
            var media = raw[i][1].split(';')[0].trim().toLowerCase();
            if (FORM_TYPES.indexOf(media) >= 0) {
                return true;
            }
        }
    }
    return false;
}

// A request without a body (every registry client starts an upload or a mount so): nothing to stream,
// so nginx may send it again to another replica.
function bodiless(r) {
    var length = r.headersIn['Content-Length'];
    return (length === undefined || length === '0') && r.headersIn['Transfer-Encoding'] === undefined;
}

function deniedWrite(r, user, rights, name) {
    var where = rights.push.length ? rights.push.join(', ') : 'no namespace';
    return fail(r, 403, 'DENIED', 'push to ' + name + ' is denied; ' + user + ' may push to: ' + where,
         {name: name, push: rights.push});
}

// Manifest writes and referrers reads of a private namespace go through referrers.js, which keeps each
// subject's referrers index; everything else goes straight to the private registry, blob reads by
// their own route.
function privateRoute(r, p, read) {
    if (p.rest.indexOf('referrers/') === 0) {
        return read ? N.routes.referrers : N.routes.privateWrite;
    }
    if (p.rest.indexOf('manifests/') === 0 && (r.method === 'PUT' || r.method === 'DELETE')) {
        return N.routes.manifestWrite;
    }
    if (!read) {
        return r.method === 'POST' && p.upload && bodiless(r) ? N.routes.privateStart : N.routes.privateWrite;
    }
    // Blob downloads get a transfer's timeouts; every other read a small answer's (routes.conf.j2).
    return p.rest.indexOf('blobs/') === 0 && !p.upload ? N.routes.privateBlob : N.routes.privateRead;
}

function registryTarget(r) {
    // Runs in the rewrite phase, before auth_request has checked the login: every target location
    // authenticates (refusals included), so an unverified $remote_user only ever picks which one.
    var cfg = routes(r);
    // Unknown (or not yet verified) names get no rights and are never echoed back: they may hold
    // anything a client sends, control characters and invalid UTF-8 included.
    var known = owncr.own(cfg.users, r.variables.remote_user);
    var user = known ? r.variables.remote_user : 'this login';
    var rights = known ? cfg.users[user] : NO_RIGHTS;
    var read = isRead(r);
    var uri = r.variables.uri;
    if (uri === '/v2/' || uri === '/v2') {
        return read ? ping(r) : fail(r, 405, 'UNSUPPORTED', 'only GET and HEAD on /v2/');
    }
    if (uri === '/v2/_catalog') {
        if (!read) {
            return fail(r, 405, 'UNSUPPORTED', 'only GET and HEAD on the catalog');
        }
        // The catalog lists every private repository: only for users who may pull every namespace
        // (the refusal names none of the others).
        var hidden = cfg.namespaces.filter(function (ns) { return rights.pull.indexOf(ns) < 0; });
        if (hidden.length) {
            return fail(r, 403, 'DENIED', user + ' may not list the catalog: it needs a pull right on every private namespace');
        }
        return go(r, N.routes.privateRead, uri);
    }
    var p = parse(uri);
    if (p === null) {
        return fail(r, 404, 'NAME_INVALID', 'not a registry API path: ' + uri);
    }
    var ns = privateNamespace(cfg, p.name);
    if (ns !== null) {
        if (read && rights.pull.indexOf(ns) < 0) {
            return fail(r, 403, 'DENIED', user + ' may not pull from ' + ns, {name: p.name, pull: rights.pull});
        }
        if (!read && rights.push.indexOf(ns) < 0) {
            return deniedWrite(r, user, rights, p.name);
        }
        if (!read && formBody(r)) {
            return fail(r, 415, 'UNSUPPORTED', 'form-encoded request bodies are not accepted');
        }
        var mount = p.upload && !read ? deniedMount(r, cfg, user, rights) : null;
        if (mount !== null) {
            return mount;
        }
        return go(r, privateRoute(r, p, read), uri);
    }
    if (!read) {
        return deniedWrite(r, user, rights, p.name);
    }
    if (p.upload) {
        // Upload status only exists on the private side (it answers BLOB_UPLOAD_UNKNOWN here).
        return go(r, N.routes.privateRead, uri);
    }
    return toCache(r, p);
}

function mirrorTarget(r) {
    var cfg = routes(r);
    if (r.variables.owncr_mirror_client !== '1') {
        return fail(r, 403, 'DENIED', 'client ' + r.variables.remote_addr + ' may not use this mirror');
    }
    if (!isRead(r)) {
        return fail(r, 405, 'UNSUPPORTED', 'the mirror is read-only; push to the registry door');
    }
    var uri = r.variables.uri;
    if (uri === '/v2/' || uri === '/v2') {
        return ping(r);
    }
    if (uri === '/v2/_catalog') {
        return fail(r, 403, 'DENIED', 'the catalog is served on the registry door only');
    }
    var p = parse(uri);
    if (p === null) {
        return fail(r, 404, 'NAME_INVALID', 'not a registry API path: ' + uri);
    }
    if (p.upload) {
        return fail(r, 404, 'BLOB_UPLOAD_UNKNOWN', 'the mirror is read-only');
    }
    if (privateNamespace(cfg, p.name) !== null) {
        // Private names do not exist on the mirror door (and never reach an upstream): answered as a
        // name the upstream does not know, in its every state (down or rate limiting: 503). A manifest
        // by digest that no upstream has is a 500 from Distribution's proxy (v3.1.1).
        mirrored(r, p);
        r.variables.owncr_route = N.routes.refused;
        var byDigest = p.rest.indexOf('manifests/') === 0 && !p.tag;
        return owncr.answer(byDigest ? N.routes.failed : N.routes.missed);
    }
    return toCache(r, p);
}

// nginx rewrites to whatever these return: anything but an internal URI (/_owncr/) would be a bug here,
// answered as a refusal rather than served from the file system.
function checked(decide) {
    return function (r) {
        var target;
        try {
            target = decide(r);
        } catch (e) {
            // A request the rules above did not foresee: refused, never a 500 with a stack trace.
            return fail(r, 400, 'UNSUPPORTED', 'request not understood');
        }
        if (typeof target !== 'string' || target.indexOf(N.internal) !== 0) {
            return fail(r, 403, 'DENIED', 'no route');
        }
        return target;
    };
}

var registry = checked(registryTarget);
var mirror = checked(mirrorTarget);

function authenticated(r) {
    // Reached only after auth_basic accepted the login (content phase follows the access phase).
    r.return(200);
}

function authCacheKey(r) {
    // A salted hash, as nginx writes cache keys to disk (never the header itself). The client address
    // is part of it: a guess from another address can never hit a login verified for someone else,
    // so every guess passes the per-address limiter in front of bcrypt.
    var header = r.headersIn['Authorization'] || '';
    return crypto.createHash('sha256').update(r.variables.owncr_auth_salt).update(r.variables.remote_addr)
        .update('\n').update(header).digest('hex');
}

export default {registry, mirror, authenticated, authCacheKey};
