# The signal server on the official Deno image (Debian variant).
#   docker build -t signal-server .
#   docker run --rm -p 3903:3903 signal-server
# Settings come from the environment (see README: Configuration), e.g.
#   docker run --rm -p 8080:8080 -e PORT=8080 -e ALLOWED_ORIGINS=https://app.example signal-server
FROM denoland/deno:2.9.6

WORKDIR /app

# The manifest and lockfile first: the dependency layer below is rebuilt only
# when they (or the sources it is resolved from) change.
COPY deno.json deno.lock ./
COPY main.ts ./
COPY lib/ ./lib/

# Fetch and type-check everything main.ts imports, exactly as locked, into the
# image's DENO_DIR, so the container needs no registry at run time. Done as
# the unprivileged user so that user can read the cache.
USER deno
RUN deno cache --frozen main.ts

ENV PORT=3903 \
    HOST=0.0.0.0 \
    DENO_NO_UPDATE_CHECK=1 \
    DENO_NO_PROMPT=1

EXPOSE 3903

# No curl in the image: ask Deno itself (`deno eval` runs with all permissions).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["deno", "eval", "const r = await fetch(`http://127.0.0.1:${Deno.env.get('PORT') ?? '3903'}/healthz`); await r.body?.cancel(); Deno.exit(r.ok ? 0 : 1)"]

# The same permissions as `deno task start`: network, environment, and reading
# files (TLS certificate and key, TURN secret file). --cached-only: nothing is
# downloaded at run time. The V8 flag is deno.json's (a larger young
# generation: fewer scavenges while thousands of clients connect).
CMD ["deno", "run", "--cached-only", "--v8-flags=--max-semi-space-size=16", "--allow-net", "--allow-env", "--allow-read", "main.ts"]
