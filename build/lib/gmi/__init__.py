"""GMI Cloud engine: model catalogue, request-queue client, job journal, media decoding. Never imports ComfyUI."""
