// owncr referrers (njs >= 0.8, both engines): the OCI 1.1 referrers API on the registry door's private
// namespaces, which Distribution 3.1.1 lacks (GET /v2/<name>/referrers/<digest> answers 404 there).
//
// The list of a subject's referrers is the one the OCI spec's fallback scheme already defines: an image
// index tagged <alg>-<hex> in the same repository (distribution-spec "referrers tag schema"). Every
// manifest pushed through the door with a `subject` is added to that index before the push is answered
// with OCI-Subject, and removed from it when the manifest is deleted; the API reads the index back. So
// old clients that read or write the tag themselves and new clients that use the API see one list,
// stored in the registry like any manifest (replicated, backed up, collected with the repository).
//
// The router (router.js) sends a private namespace's manifest writes here (js_content: the body, at most
// 4 MiB, is read first) and its referrers reads; the rights were checked there, the login by nginx.
import owncr from 'owncr.js';
import store from 'store.js';

var N = owncr.names;
var INDEX = N.ociIndex;
// This request's internal URI: /_owncr/<manifest_write or referrers>/v2/<name>/<manifests|referrers>/<ref>.
var ROUTE = new RegExp('^' + N.internal + '(?:' + N.routes.manifestWrite + '|' + N.routes.referrers + ')'
    + '(/v2/(.+)/(manifests|referrers)/([^/]+))$');

function answer(r, status, body, type) {
    r.headersOut['Content-Type'] = type || 'application/json';
    r.return(status, body);
}

function route(r) {
    var m = owncr.whole(ROUTE, r.uri);
    return m === null ? null : {path: m[1], name: m[2], ref: m[4]};
}

// The fallback tag of a subject: <alg>-<hex>, truncated to 32 and 64 characters (the spec's tag schema).
function fallbackTag(digest) {
    var parts = digest.split(':');
    return parts[0].slice(0, 32) + '-' + parts[1].slice(0, 64);
}

function newIndex(manifests) {
    return {schemaVersion: 2, mediaType: INDEX, manifests: manifests};
}

// The referrers index as stored (an empty one when there is none yet); null when the registry failed.
async function readIndex(r, name, subject) {
    var reply = await r.subrequest(owncr.internal(N.routes.referrersIndex, '/v2/' + name + '/manifests/'
        + fallbackTag(subject)));
    if (reply.status !== 200) {
        return reply.status === 404 ? newIndex([]) : null;
    }
    var index = parsed(reply.responseText);
    // Something else under that tag (not an index): the API shows no referrers rather than failing.
    if (index === null || typeof index !== 'object') {
        return newIndex([]);
    }
    if (!Array.isArray(index.manifests)) {
        index.manifests = [];
    }
    return index;
}

// Read, change and write back the subject's index; true once stored. One writer at a time per subject
// on every node: the store's lease lock on the shared storage (store.js), so concurrent attaches through
// different gateways all end up in the index.
async function updateIndex(r, name, subject, change) {
    var stored = await store.locked(r, 'referrers/' + name + '/' + fallbackTag(subject), async function (lease) {
        var index = await readIndex(r, name, subject);
        if (index === null || !lease.writable()) {
            return false;
        }
        index.schemaVersion = 2;
        index.mediaType = INDEX;
        index.manifests = change(index.manifests);
        var put = await r.subrequest(owncr.internal(N.routes.referrersPut, '/v2/' + name + '/manifests/'
            + fallbackTag(subject)), {method: 'PUT', body: JSON.stringify(index)});
        return put.status === 201;
    });
    return stored === true;
}

// The manifest's subject digest, or null (not JSON, no subject, or not a digest).
function subjectOf(manifest) {
    var s = manifest && manifest.subject;
    return s && typeof s.digest === 'string' && owncr.isDigest(s.digest) ? s.digest : null;
}

// A manifest that names a subject which is not one (not a descriptor, or its digest not exactly one):
// refused before it is stored, as nothing could list it, and its digest would reach OCI-Subject.
function badSubject(manifest) {
    var s = manifest !== null && typeof manifest === 'object' ? manifest.subject : undefined;
    return s !== undefined && s !== null && subjectOf(manifest) === null;
}

function parsed(text) {
    try {
        return JSON.parse(text);
    } catch (e) {
        return null;
    }
}

// A referrer's descriptor as the spec lists it: artifactType falls back to the config's media type.
function descriptor(manifest, digest, size, contentType) {
    var d = {mediaType: manifest.mediaType || contentType, digest: digest, size: size};
    var type = manifest.artifactType || (manifest.config && manifest.config.mediaType);
    if (type) {
        d.artifactType = type;
    }
    if (manifest.annotations && typeof manifest.annotations === 'object') {
        d.annotations = manifest.annotations;
    }
    return d;
}

// How long a refused write should wait: nginx applies add_header to main requests only, so the
// read-only window's Retry-After (routes.conf.j2) reaches a subrequest in its body's detail alone.
function retryAfter(reply) {
    var body = reply.status === 503 ? parsed(reply.responseText) : null;
    var error = body && Array.isArray(body.errors) ? body.errors[0] : null;
    var seconds = error && error.detail ? error.detail.retry_after_seconds : undefined;
    return typeof seconds === 'number' ? String(seconds) : reply.headersOut['Retry-After'];
}

// The private registry's answer, passed on (its error bodies are Distribution's own OCI errors).
function relay(r, reply) {
    ['Location', 'Docker-Content-Digest'].forEach(function (h) {
        if (reply.headersOut[h] !== undefined) {
            r.headersOut[h] = reply.headersOut[h];
        }
    });
    var wait = retryAfter(reply);
    if (wait !== undefined) {
        r.headersOut['Retry-After'] = wait;
    }
    var type = reply.headersOut['Content-Type'];
    if (reply.responseText) {
        answer(r, reply.status, reply.responseText, type);
    } else {
        r.return(reply.status);
    }
}

async function put(r, where) {
    var body = r.requestText || '';
    if (badSubject(parsed(body))) {
        return answer(r, 400, owncr.error('subject_invalid'));
    }
    var reply = await r.subrequest(owncr.internal(N.routes.privateWrite, where.path), {method: 'PUT'});
    var manifest = reply.status === 201 ? parsed(body) : null;
    var subject = subjectOf(manifest);
    var digest = reply.headersOut['Docker-Content-Digest'];
    if (subject !== null && digest) {
        var entry = descriptor(manifest, digest, r.requestBuffer.length, r.headersIn['Content-Type']);
        var stored = await updateIndex(r, where.name, subject, function (list) {
            return list.filter(function (d) { return d.digest !== digest; }).concat([entry]);
        });
        // Without the header a client keeps the fallback index itself (as with any registry without the
        // API), so a failed update still leaves the referrer listed.
        if (stored) {
            r.headersOut['OCI-Subject'] = subject;
        } else {
            r.error('referrers: could not add ' + digest + ' to the index of ' + where.name + '@' + subject);
        }
    }
    relay(r, reply);
}

async function remove(r, where) {
    // The subject is in the manifest being deleted: read it first (only a digest names one manifest).
    var subject = null;
    if (owncr.isDigest(where.ref)) {
        var current = await r.subrequest(owncr.internal(N.routes.referrersManifest, where.path));
        subject = current.status === 200 ? subjectOf(parsed(current.responseText)) : null;
    }
    var reply = await r.subrequest(owncr.internal(N.routes.privateWrite, where.path), {method: 'DELETE'});
    if (reply.status === 202 && subject !== null) {
        var removed = await updateIndex(r, where.name, subject, function (list) {
            return list.filter(function (d) { return d.digest !== where.ref; });
        });
        if (!removed) {
            r.error('referrers: could not remove ' + where.ref + ' from the index of ' + where.name + '@' + subject);
        }
    }
    relay(r, reply);
}

// js_content of a private manifest write (PUT or DELETE): the registry stores it, the index follows.
async function write(r) {
    var where = route(r);
    if (where === null) {
        return answer(r, 404, owncr.error('name_invalid'));
    }
    try {
        if (r.method === 'PUT') {
            await put(r, where);
        } else {
            await remove(r, where);
        }
    } catch (e) {
        r.error('referrers: ' + e);
        answer(r, 500, owncr.error('backend_failed'));
    }
}

// js_content of GET/HEAD /v2/<name>/referrers/<digest>: the subject's index, filtered by artifactType.
async function list(r) {
    var where = route(r);
    if (where === null || !owncr.isDigest(where.ref)) {
        return answer(r, 400, owncr.error('digest_invalid'));
    }
    var index = await readIndex(r, where.name, where.ref);
    if (index === null) {
        return answer(r, 503, owncr.error('backend_unavailable'));
    }
    var manifests = index.manifests;
    var wanted = r.args.artifactType;
    if (wanted !== undefined) {
        var types = Array.isArray(wanted) ? wanted : [wanted];
        manifests = manifests.filter(function (d) { return types.indexOf(d.artifactType) >= 0; });
        r.headersOut['OCI-Filters-Applied'] = 'artifactType';
    }
    answer(r, 200, JSON.stringify(newIndex(manifests)) + '\n', INDEX);
}

export default {write, list};
