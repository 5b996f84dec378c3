// s3rver with the two multipart calls it lacks: ListMultipartUploads
// (GET /BUCKET?uploads) and AbortMultipartUpload (DELETE /BUCKET/KEY?uploadId=).
// s3rver 3.7 answers both with NotImplemented / 405, so without them a test
// cannot see or clean up the uploads a killed writer abandons (Note
// [Abandoned uploads] in kiln/ckpt/remote.cc). They read and remove s3rver's
// own record of an upload (BUCKET/._S3rver_uploads/ID/{key,metadata,N}) through
// its store's path helper. Launched by LocalS3Server (local_s3rver.cc):
//
//   node s3rver_uploads.js S3RVER_JS --directory D --address A --port P --configure-bucket B
//
// where S3RVER_JS is s3rver's bin/s3rver.js (or a link to it).
'use strict';

const fs = require('fs');
const path = require('path');

function option(name) {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
}

const s3rverDir = path.resolve(path.dirname(fs.realpathSync(process.argv[2])), '..');
const S3rver = require(s3rverDir);
const bucket = option('--configure-bucket');
fs.mkdirSync(option('--directory'), { recursive: true });
const app = new S3rver({
  directory: option('--directory'),
  address: option('--address'),
  port: Number(option('--port')),
  silent: true,
  configureBuckets: [{ name: bucket, configs: [] }],
});

function xmlEscape(s) {
  return s.replace(/[<>&'"]/g, c => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', "'": '&apos;', '"': '&quot;' })[c]);
}

function uploadsDir(name) {
  return app.store.getResourcePath(name, undefined, 'uploads');
}

function noSuchUpload(ctx, id) {
  ctx.status = 404;
  ctx.type = 'application/xml';
  ctx.body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchUpload</Code>` +
    `<Message>The specified upload does not exist.</Message><UploadId>${xmlEscape(id)}</UploadId></Error>`;
}

async function listUploads(ctx, name) {
  const prefix = ctx.query.prefix || '';
  const dir = uploadsDir(name);
  const uploads = [];
  for (const id of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
    let key;
    try {
      key = fs.readFileSync(path.join(dir, id, 'key'), 'utf8');
    } catch (e) {
      continue;  // completed or aborted meanwhile
    }
    if (!key.startsWith(prefix)) continue;
    const initiated = fs.statSync(path.join(dir, id)).mtime.toISOString();
    uploads.push({ key, id, initiated });
  }
  uploads.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : a.id < b.id ? -1 : 1));
  ctx.type = 'application/xml';
  ctx.body = '<?xml version="1.0" encoding="UTF-8"?>\n' +
    '<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">' +
    `<Bucket>${xmlEscape(name)}</Bucket><Prefix>${xmlEscape(prefix)}</Prefix>` +
    '<MaxUploads>1000</MaxUploads><IsTruncated>false</IsTruncated>' +
    uploads.map(u => `<Upload><Key>${xmlEscape(u.key)}</Key><UploadId>${u.id}</UploadId>` +
      `<Initiated>${u.initiated}</Initiated></Upload>`).join('') +
    '</ListMultipartUploadsResult>';
}

function abortUpload(ctx, name, key) {
  const id = String(ctx.query.uploadId);
  const dir = path.join(uploadsDir(name), id);
  // s3rver's ids are hex; anything else cannot name one (nor leave the directory).
  if (!/^[0-9a-fA-F]+$/.test(id) || !fs.existsSync(dir) ||
      fs.readFileSync(path.join(dir, 'key'), 'utf8') !== key) {
    return noSuchUpload(ctx, id);
  }
  fs.rmSync(dir, { recursive: true, force: true });
  ctx.status = 204;
}

// First in the chain: s3rver's router would refuse these requests.
app.middleware.unshift(async (ctx, next) => {
  const parts = ctx.path.split('/').slice(1);
  const name = decodeURIComponent(parts[0] || '');
  if (ctx.method === 'GET' && parts.length === 1 && 'uploads' in ctx.query) {
    return listUploads(ctx, name);
  }
  if (ctx.method === 'DELETE' && parts.length > 1 && 'uploadId' in ctx.query) {
    return abortUpload(ctx, name, parts.slice(1).map(decodeURIComponent).join('/'));
  }
  return next();
});

app.run(err => {
  if (err) {
    console.error(err);
    process.exit(1);
  }
});
