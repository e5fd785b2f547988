// Node's basic-ftp through ftpsgate, driven by tests/interop.rs.
//
// Usage: node basic_ftp.js HOST PORT explicit|implicit USER PASSWORD PARALLEL
// PARALLEL clients at once each upload a file of their own (random bytes), list, and download
// it back; every file is compared by SHA-256. basic-ftp resumes the control connection's TLS
// session on its data connections. Prints "ok ..." and exits 0, or "FAIL ..." and exits 1.

const crypto = require("crypto");
const { Readable, Writable } = require("stream");
const ftp = require("basic-ftp");

const [host, port, mode, user, password, parallel] = process.argv.slice(2);

const sha = (b) => crypto.createHash("sha256").update(b).digest("hex");

async function one(i) {
  const client = new ftp.Client(30_000);
  try {
    await client.access({
      host,
      port: Number(port),
      user,
      password,
      secure: mode === "implicit" ? "implicit" : true,
      secureOptions: { rejectUnauthorized: false },
    });
    const data = crypto.randomBytes(300_000 + i * 7919);
    const name = `node-${mode}-${i}.bin`;
    await client.uploadFrom(Readable.from([data]), name);
    const listed = (await client.list()).find((f) => f.name === name);
    if (!listed || listed.size !== data.length) throw new Error(`LIST does not show ${name}`);
    const chunks = [];
    const sink = new Writable({
      write(chunk, _enc, done) {
        chunks.push(chunk);
        done();
      },
    });
    await client.downloadTo(sink, name);
    if (sha(Buffer.concat(chunks)) !== sha(data)) throw new Error(`${name}: hash mismatch`);
    return name;
  } finally {
    client.close();
  }
}

Promise.all(Array.from({ length: Number(parallel) }, (_, i) => one(i)))
  .then((names) => console.log(`ok ${names.length} clients: ${names.join(" ")}`))
  .catch((e) => {
    console.log(`FAIL ${e && e.message}`);
    process.exit(1);
  });
