// owncr's shared njs definitions (njs >= 0.8, both engines), imported by router.js, egress.js, referrers.js
// and metrics.js: the vocabulary (names.js, generated from gateway/names.py: internal URIs, route names,
// upstream ids, the error table) and the helpers every module needs. No module spells a name or builds an
// error body on its own.
import names from 'names.js';

// An error body as Distribution writes one (one JSON document and a newline).
function errorBody(code, message, detail) {
    return JSON.stringify({errors: [{code: code, message: message, detail: detail || null}]}) + '\n';
}

// One of the error table's answers, by name (gateway/names.py ERRORS).
function error(name) {
    var e = names.errors[name];
    return errorBody(e.code, e.message);
}

// The internal URI of a route: internal('private_read', '/v2/...') -> '/_owncr/private_read/v2/...'.
function internal(route, rest) {
    return names.internal + route + (rest || '');
}

// nginx's own answer with that status (or 'ping', 'failed'): /_owncr/answer/<status>.
function answer(status) {
    return internal(names.routes.answer, '/' + status);
}

// An egress server's location for an outcome: /_owncr/egress/<outcome>.
function egress(outcome) {
    return internal(names.routes.egress, '/' + outcome);
}

// Lookups by client-chosen keys (user names, hosts) only ever see a table's own entries, never
// Object.prototype's ("constructor", "__proto__", ...).
function own(obj, key) {
    return typeof key === 'string' && Object.prototype.hasOwnProperty.call(obj, key);
}

// A match of `re` covering all of `text`, or null. On the njs engine (PCRE) a pattern's `$` also matches
// just before a final newline, on QuickJS it does not: "sha256:<hex>\n" would pass one engine's check,
// then reach a header (an invalid one: a 500 after the write) or a path. Every check of text a client or
// an upstream sent goes through here, the same on both engines.
function whole(re, text) {
    var m = typeof text === 'string' ? re.exec(text) : null;
    return m !== null && m.index === 0 && m[0] === text ? m : null;
}

// A content digest as the registries accept one (the algorithms Distribution 3.1.1 registers).
var DIGEST = /^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/;

function isDigest(text) {
    return whole(DIGEST, text) !== null;
}

// The upstream a cache route serves, from the router's $owncr_upstream (empty: not a cache route).
function upstreamOf(r) {
    var id = r.variables.owncr_upstream || '';
    return own(names.upstreams, id) ? id : null;
}

export default {names, errorBody, error, internal, answer, egress, own, whole, isDigest, upstreamOf};
