// owncr store (njs >= 0.8, both engines): how gateways on different nodes agree on a write. The one
// mechanism for every feature that needs it (docs/architecture.md, "How nodes agree"): small objects of
// the gateway's own on the storage every node already shares, under the prefix names.store.prefix, next
// to (never inside) the registries' roots, created with a conditional write that only one writer can win:
//   - S3 and R2: PUT with `If-None-Match: *` (412 when the key exists), signed with AWS Signature V4;
//   - a filesystem or NFS mount: open(O_CREAT | O_EXCL) (fs flag 'wx'; NFSv3 and v4 create exclusively).
// No coordinator of its own: whatever stores the images arbitrates, and it survives any node's loss.
//
// On top of create-if-absent sits a lease lock (`locked`): the lock object records who holds it and until
// when. A holder that dies (its node lost) leaves it behind; once the lease has passed, one waiter wins
// the right to break it by creating a claim named after that holder's lease (create-if-absent again, so
// two waiters never both break it), removes it and takes its turn. A holder writes only while its lease
// has at least SAFE_MS left, and every step is bounded (js_fetch_timeout, the routes' read timeouts), so
// a broken lease's holder can no longer write. Clocks: nodes keep NTP time; SKEW_MS covers their drift.
//
// The bundle's store file (a secret: it holds the bucket's keys; $owncr_store_file) says which kind.
import fs from 'fs';
import crypto from 'crypto';
import owncr from 'owncr.js';

var N = owncr.names;
var LEASE_MS = N.store.leaseSeconds * 1000;
var SKEW_MS = 2000;
// A holder sends its last write only with this much of its lease left: the longest a write may take
// (the referrers routes' read timeout) plus the clocks' drift.
var SAFE_MS = N.store.writeSeconds * 1000 + SKEW_MS;
// How long a writer waits for its turn: long enough for a dead holder's lease to pass and be broken.
var WAIT_MS = LEASE_MS + 2 * SKEW_MS + 5000;
var POLL_MS = 25;
// Keys are the gateway's own (a route name, a repository name the router checked, a digest): checked
// again here, so no path can climb out of the store's prefix.
var KEY = /^[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:\/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*$/;

function config(r) {
    return JSON.parse(fs.readFileSync(r.variables.owncr_store_file, 'utf8'));
}

function checked(key) {
    if (owncr.whole(KEY, key) === null) {
        throw new Error('store: refused key ' + JSON.stringify(key));
    }
    return key;
}

// A random name part of `length` hex digits (a lease's id, a temporary file's suffix).
function token(length) {
    return sha256(String(Math.random()) + Date.now()).slice(0, length);
}

function sleep(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
}

// --- a filesystem or NFS mount ---------------------------------------------------------------------

function filePath(cfg, key) {
    return cfg.root + '/' + N.store.prefix + '/' + key;
}

// The path of `key`, its directory made first.
async function placed(cfg, key) {
    var path = filePath(cfg, key);
    await fs.promises.mkdir(path.slice(0, path.lastIndexOf('/')), {recursive: true});
    return path;
}

var files = {
    create: async function (cfg, key, body) {
        var path = await placed(cfg, key);
        try {
            await fs.promises.writeFile(path, body, {flag: 'wx'});
            return true;
        } catch (e) {
            if (e.code === 'EEXIST') {
                return false;
            }
            throw e;
        }
    },
    read: async function (cfg, key) {
        var path = filePath(cfg, key);
        try {
            var modified = (await fs.promises.stat(path)).mtimeMs;
            return {text: await fs.promises.readFile(path, 'utf8'), modified: modified};
        } catch (e) {
            if (e.code === 'ENOENT') {
                return null;
            }
            throw e;
        }
    },
    put: async function (cfg, key, body) {
        var path = await placed(cfg, key);
        var temporary = path + '.' + token(16);
        await fs.promises.writeFile(temporary, body);
        await fs.promises.rename(temporary, path);  // whole or not at all, for every reader
    },
    remove: async function (cfg, key) {
        try {
            await fs.promises.unlink(filePath(cfg, key));
        } catch (e) {
            if (e.code !== 'ENOENT') {
                throw e;
            }
        }
    },
};

// --- S3 and R2 -------------------------------------------------------------------------------------

function sha256(data) {
    return crypto.createHash('sha256').update(data).digest('hex');
}

function hmac(key, data) {
    return crypto.createHmac('sha256', key).update(data).digest();
}

function amzDate(now) {
    return now.toISOString().replace(/[-:]/g, '').replace(/\.\d+/, '');
}

// AWS Signature V4 in headers (https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html):
// host, payload hash and date signed; the request's path is already in canonical (encoded) form.
function signed(cfg, method, host, path, body) {
    var date = amzDate(new Date());
    var payload = sha256(body);
    var scope = date.slice(0, 8) + '/' + cfg.region + '/s3/aws4_request';
    var headerNames = 'host;x-amz-content-sha256;x-amz-date';
    var canonical = [method, path, '', 'host:' + host, 'x-amz-content-sha256:' + payload,
        'x-amz-date:' + date, '', headerNames, payload].join('\n');
    var toSign = ['AWS4-HMAC-SHA256', date, scope, sha256(canonical)].join('\n');
    var key = hmac(hmac(hmac(hmac('AWS4' + cfg.secretKey, date.slice(0, 8)), cfg.region), 's3'), 'aws4_request');
    return {
        'Authorization': 'AWS4-HMAC-SHA256 Credential=' + cfg.accessKey + '/' + scope + ', SignedHeaders='
            + headerNames + ', Signature=' + crypto.createHmac('sha256', key).update(toSign).digest('hex'),
        'X-Amz-Content-Sha256': payload,
        'X-Amz-Date': date,
    };
}

async function s3(cfg, method, key, body, extra) {
    var endpoint = cfg.endpoint.match(/^(https?):\/\/([^/]+)/);
    var host = cfg.pathStyle ? endpoint[2] : cfg.bucket + '.' + endpoint[2];
    var path = (cfg.pathStyle ? '/' + cfg.bucket : '') + '/' + N.store.prefix + '/' + key;
    var headers = signed(cfg, method, host, path, body || '');
    Object.keys(extra || {}).forEach(function (h) { headers[h] = extra[h]; });
    var reply = await ngx.fetch(endpoint[1] + '://' + host + path, {method: method, body: body, headers: headers});
    var text = await reply.text();
    return {status: reply.status, text: text, modified: Date.parse(reply.headers.get('Last-Modified') || '')};
}

function s3Failed(op, key, reply) {
    return new Error('store: ' + op + ' ' + key + ' answered ' + reply.status + ' ' + reply.text.slice(0, 200));
}

var buckets = {
    create: async function (cfg, key, body) {
        var reply = await s3(cfg, 'PUT', key, body, {'If-None-Match': '*'});
        // 412: the key exists; 409: another conditional write of that key is under way (S3), it wins.
        if (reply.status === 412 || reply.status === 409) {
            return false;
        }
        if (reply.status !== 200) {
            throw s3Failed('create', key, reply);
        }
        return true;
    },
    put: async function (cfg, key, body) {
        var reply = await s3(cfg, 'PUT', key, body);
        if (reply.status !== 200) {
            throw s3Failed('put', key, reply);
        }
    },
    read: async function (cfg, key) {
        var reply = await s3(cfg, 'GET', key);
        if (reply.status === 404) {
            return null;
        }
        if (reply.status !== 200) {
            throw s3Failed('read', key, reply);
        }
        return {text: reply.text, modified: reply.modified};
    },
    remove: async function (cfg, key) {
        var reply = await s3(cfg, 'DELETE', key);
        if (reply.status !== 204 && reply.status !== 200 && reply.status !== 404) {
            throw s3Failed('remove', key, reply);
        }
    },
};

function backend(cfg) {
    return cfg.kind === 's3' ? buckets : files;
}

// Write `key` whatever was there (last writer wins): for what one writer decides alone.
async function put(r, key, body) {
    var cfg = config(r);
    return backend(cfg).put(cfg, checked(key), body);
}

// The text stored under `key`, or null when there is none.
async function read(r, key) {
    var cfg = config(r);
    var found = await backend(cfg).read(cfg, checked(key));
    return found === null ? null : found.text;
}

// --- the lease lock --------------------------------------------------------------------------------

// A lock object's lease. One that does not parse (on a filesystem a reader can see the file created and
// not yet written; a holder may have died right then) lasts a lease from when it was last written.
function leaseOf(found) {
    try {
        var lease = JSON.parse(found.text);
        if (typeof lease.until === 'number' && typeof lease.id === 'string' && owncr.whole(/^[a-f0-9]{32}$/, lease.id) !== null) {
            return lease;
        }
    } catch (e) {
        // below
    }
    var modified = isNaN(found.modified) ? 0 : found.modified;
    return {id: 'written-' + modified, until: modified + LEASE_MS};
}

// Run `work(lease)` holding the lock named `name` (a key below locks/) on every node; `lease.writable()`
// says whether a write may still start. Resolves to work's result, or to null when the turn never came
// (WAIT_MS) or the store failed (logged).
async function locked(r, name, work) {
    var cfg = config(r);
    var store = backend(cfg);
    var key = checked('locks/' + name);
    var deadline = Date.now() + WAIT_MS;
    try {
        while (Date.now() < deadline) {
            var lease = {id: token(32), until: Date.now() + LEASE_MS};
            if (await store.create(cfg, key, JSON.stringify(lease))) {
                return await holding(r, cfg, store, key, lease, work);
            }
            var found = await store.read(cfg, key);
            if (found === null) {
                continue;  // its holder finished since: try again at once
            }
            var held = leaseOf(found);
            if (held.until + SKEW_MS < Date.now()) {
                if (await store.create(cfg, checked(key + '.broken/' + held.id), String(Date.now()))) {
                    r.warn('store: broke the lease on ' + name + ' (' + held.id + ') that its holder left behind');
                    await store.remove(cfg, key);
                }
                continue;
            }
            await sleep(POLL_MS + Math.floor(Math.random() * POLL_MS));
        }
        r.error('store: no turn on ' + name + ' within ' + WAIT_MS + ' ms');
    } catch (e) {
        r.error('' + e);
    }
    return null;
}

async function holding(r, cfg, store, key, lease, work) {
    var writable = function () { return Date.now() + SAFE_MS < lease.until; };
    try {
        return await work({writable: writable});
    } finally {
        // Past that point a waiter may already have broken the lease and taken its own: leave it alone.
        // A lock left behind (this failed too) is broken once its lease has passed.
        if (writable()) {
            await store.remove(cfg, key).catch(function (e) { r.error('' + e); });
        }
    }
}

export default {put, read, locked};
