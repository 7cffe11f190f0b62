// owncr pulls (njs >= 0.8.1, both engines): the mirror's last-pull records, which maintenance evicts by
// (gateway/upkeep/eviction.py). Every manifest a client pulls from a cache (by tag or digest, GET or HEAD,
// on either door) is noted as its access log line is written ($owncr_pulled, js_set `seen`), and each
// nginx writes what it noted to the store every few seconds (js_periodic `flush`): one object per
// manifest, `pulls/<upstream id>/<repository>/<sha256 hex>`, rewritten on every node that serves it, so
// its modification time is the manifest's last pull anywhere. Nothing is written in the request's path:
// a pull never waits for the storage, and a storage hiccup costs a record's freshness, never a pull.
import owncr from 'owncr.js';
import store from 'store.js';

var N = owncr.names;
var PENDING = 'owncr_pulls';  // noted, not yet written
var WRITTEN = 'owncr_pulls_written';  // written lately (entries expire): not again until then
var DIGEST = /^sha256:([a-f0-9]{64})$/;
var BATCH = 256;  // records written per round; the rest wait for the next

// js_set $owncr_pulled, referenced by the access log format only: evaluated once per logged request.
function seen(r) {
    try {
        var v = r.variables;
        var id = owncr.upstreamOf(r);
        // The digest the client was answered with (a manifest by tag says which one it got).
        var sent = v.sent_http_docker_content_digest || '';
        var digest = owncr.whole(DIGEST, sent);
        var door = v.owncr_door === 'mirror' || v.owncr_door === 'registry';  // not a cache's own call
        if (!door || id === null || v.owncr_kind !== 'manifest' || v.status !== '200' || digest === null
            || (v.request_method !== 'GET' && v.request_method !== 'HEAD')) {
            return '';
        }
        var key = id + '/' + v.owncr_repository + '/' + digest[1];
        if (!ngx.shared[WRITTEN].has(key)) {
            ngx.shared[PENDING].set(key, '');
        }
    } catch (e) {
        // The zone is full: the pull is served and logged; the record waits for a later pull.
        r.error('owncr pulls: ' + e.message);
    }
    return '';
}

// js_periodic: write what this nginx noted. A record that fails stays noted for the next round.
async function flush(s) {
    var keys = ngx.shared[PENDING].keys(BATCH);
    for (var i = 0; i < keys.length; i++) {
        try {
            await store.put(s, N.store.pulls + '/' + keys[i], '');
            ngx.shared[WRITTEN].set(keys[i], '');
            ngx.shared[PENDING].delete(keys[i]);
        } catch (e) {
            ngx.log(ngx.WARN, 'owncr pulls: ' + keys[i] + ': ' + e.message);
            return;
        }
    }
}

export default {seen, flush};
