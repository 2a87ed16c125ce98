"""`hashtagkit serve`: hashtags for photos over HTTP, with the models loaded once.

Why it is shaped this way:

- **One model thread, fed by a micro-batcher.** `Recommender.predict` is not thread-safe, and a
  forward pass over 16 photos costs far less than 16 passes over one. Concurrent requests put
  their decoded photos on one queue; a batcher takes up to `max_batch` of them, waiting at most
  `max_wait_ms` after the first (the definition of Ray Serve's `@serve.batch`), and runs them as
  ONE `predict` call in a single worker thread, so the event loop never blocks on the model. A
  photo nobody else can join (nothing else queued, read or decoded, no clients of a batch of
  several about to come back) does not wait `max_wait_ms` at all.
- **Close to the model.** Each answer's `Server-Timing` header says where its time went (read,
  decode, wait, model, total); connections have Nagle's algorithm off. On one photo the service
  adds about 9% to the forward pass, most of it decoding the photo (benchmarks/results/serve.md).
- **Decoding outside the model's thread.** `Recommender.prepare` (decode + preprocess, thread
  safe) runs in a small thread pool, so the next batch is decoded while the model runs.
- **The body is read by us, into memory, counted as it arrives.** Starlette's form parser spools
  each upload above 1 MiB to a temporary file on disk; we parse the multipart stream ourselves with
  python-multipart, stop with 413 as soon as the body crosses the limit (a too-large
  Content-Length is refused before any of it is read), and nothing is ever written to disk.
- **Bad photos are per-image errors.** An upload that is empty, not an image, truncated or a
  decompression bomb gets its own `error`, the others their hashtags; only a request with nothing
  usable is refused (400 no files, 415 no image). No endpoint takes a path from the client: the
  page's files are served from a list of names made when the app is created.
"""

from hashtagkit.serve.app import create_app
from hashtagkit.serve.batcher import MicroBatcher
from hashtagkit.serve.run import exposure_warning, read_token, run_server, serve_in_thread

__all__ = ["MicroBatcher", "create_app", "exposure_warning", "read_token", "run_server", "serve_in_thread"]
