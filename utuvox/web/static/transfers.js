// File transfer in the browser, the same exchange as the Python SDK (docs/PROTOCOL.md, "File sharing"):
// an upload announces its size and SHA-256, then streams base64 chunks with a bounded number
// unacknowledged; a download collects the chunks routed by download_id and keeps the file only if its
// size and SHA-256 are the ones the server announced.

import { Disconnected, ServerError } from "./client.js";
import { hashBlob, Sha256 } from "./sha256.js";

const WINDOW = 8; // chunks in flight before waiting for the oldest one's acknowledgement
const IMPOSSIBLE_OFFSET = 2 ** 53; // a chunk here ends an upload at once: how an upload is cancelled

export class Cancelled extends Error {
  constructor() {
    super("Cancelled.");
    this.code = "cancelled";
  }
}

function toBase64(bytes) {
  if (bytes.toBase64) return bytes.toBase64();
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function fromBase64(text) {
  if (Uint8Array.fromBase64) return Uint8Array.fromBase64(text);
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/**
 * Upload `file` to `room`. `job.cancelled` may be set at any time; `onProgress(done, total, phase)` hears
 * the hashing ("hashing") and the bytes the server acknowledged ("sending"). Resolves with the
 * `uploaded` reply.
 */
export async function upload(client, room, file, job, onProgress) {
  let sha256;
  try {
    sha256 = await hashBlob(file, (done, total) => onProgress(done, total, "hashing"), () => job.cancelled);
  } catch (exc) {
    throw job.cancelled ? new Cancelled() : exc;
  }
  if (job.cancelled) throw new Cancelled();
  const name = (file.name || "file").slice(0, 255);
  const ready = await client.request({ type: "upload", room, name, size: file.size, sha256 });
  const uploadId = ready.upload_id;
  const inFlight = [];
  let acked = 0;
  let failure = null;
  // A failure the server reports on a chunk that had no id of its own.
  client.routes.set(uploadId, (frame) => {
    failure = frame.type === "disconnected" ? new Disconnected(frame.message) : new ServerError(frame);
  });
  const abandon = () => {
    try {
      client.send({ type: "upload_chunk", upload_id: uploadId, offset: IMPOSSIBLE_OFFSET, data: "" });
    } catch {
      // the connection is gone, and the upload with it
    }
  };
  try {
    onProgress(0, file.size, "sending");
    let offset = 0;
    let last;
    do {
      if (job.cancelled) {
        abandon();
        throw new Cancelled();
      }
      if (failure) throw failure;
      const data = new Uint8Array(await file.slice(offset, offset + ready.chunk_size).arrayBuffer());
      const final = offset + data.length >= file.size;
      if (data.length === 0 && !final) throw new Error("The file shrank while it was being sent.");
      const reply = client.call({ type: "upload_chunk", upload_id: uploadId, offset, data: toBase64(data) });
      reply.catch(() => {}); // awaited below; a rejection before then is not "unhandled"
      inFlight.push({ reply, length: data.length, final });
      offset += data.length;
      last = final;
      while (inFlight.length >= WINDOW || (last && inFlight.length > 1)) {
        const oldest = inFlight.shift();
        await oldest.reply;
        acked += oldest.length;
        onProgress(acked, file.size, "sending");
      }
    } while (!last);
    const done = await inFlight.shift().reply;
    onProgress(file.size, file.size, "sending");
    return done;
  } catch (exc) {
    if (job.cancelled && !(exc instanceof Cancelled)) throw new Cancelled();
    throw exc;
  } finally {
    client.routes.delete(uploadId);
  }
}

/**
 * Download the shared file `name`. Resolves with {blob, original, sha256} once the bytes received match
 * the size and SHA-256 the server announced; rejects otherwise (nothing is kept).
 */
export async function download(client, name, job, onProgress) {
  const chunks = [];
  let received = 0;
  const hash = new Sha256();
  let settle;
  const finished = new Promise((resolve, reject) => {
    settle = { resolve, reject };
  });
  let start = null;
  const onFrame = (frame) => {
    if (frame.type === "download_chunk") {
      if (frame.offset !== received) {
        settle.reject(new Error(`Chunk at ${frame.offset}, expected ${received}.`));
        return;
      }
      const bytes = fromBase64(frame.data);
      received += bytes.length;
      hash.update(bytes);
      chunks.push(bytes);
      onProgress(received, start ? start.size : received);
    } else if (frame.type === "download_end") {
      settle.resolve();
    } else if (frame.type === "disconnected") {
      settle.reject(new Disconnected(frame.message));
    } else {
      settle.reject(new ServerError(frame));
    }
  };
  start = await client.request({ type: "download", name }, (reply) => {
    // Runs as download_start arrives, so the chunks right behind it find their route.
    if (reply.type === "download_start") client.routes.set(reply.download_id, onFrame);
  });
  job.cancel = () => settle.reject(new Cancelled());
  try {
    onProgress(0, start.size);
    await finished;
  } finally {
    client.routes.delete(start.download_id);
  }
  const sha256 = hash.hex();
  if (received !== start.size || sha256 !== start.sha256.toLowerCase()) {
    throw new Error("The file received does not match its size and SHA-256; it was not saved.");
  }
  return { blob: new Blob(chunks), original: start.original, sha256 };
}
