// nginx as a peer: a minimal config in a temp folder, sendfile on, one worker per core.
import { mkdtempSync, writeFileSync, readFileSync, rmSync, existsSync } from 'node:fs'
import { tmpdir, cpus } from 'node:os'
import { join } from 'node:path'
import net from 'node:net'
import { spawn } from 'node:child_process'
import { childPids } from './proc.mjs'

const NGINX = ['/usr/sbin/nginx', '/usr/local/sbin/nginx', '/opt/homebrew/bin/nginx', '/usr/local/bin/nginx'].find(existsSync)

export const nginxAvailable = () => Boolean(NGINX)

function freePort() {
  return new Promise((resolve) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address()
      probe.close(() => resolve(port))
    })
  })
}

function waitForPort(port, timeout = 10_000) {
  const until = Date.now() + timeout
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const socket = net.connect(port, '127.0.0.1', () => {
        socket.destroy()
        resolve()
      })
      socket.on('error', () => (Date.now() > until ? reject(new Error('nginx did not start')) : setTimeout(attempt, 50)))
    }
    attempt()
  })
}

/**
 * Starts nginx serving `root` at /stream/files/ (and /api/json); resolves { port, pids, stop }.
 * With `tls` ({ cert, key, http2 }): HTTPS with TLS 1.3 only, as the TLS workloads compare,
 * and HTTP/2 by ALPN when `http2`.
 */
export async function startNginx(root, tls, { accessLog = false } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'floodgate-nginx-'))
  const port = await freePort()
  writeFileSync(
    join(dir, 'nginx.conf'),
    `worker_processes ${cpus().length};
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
${
  accessLog
    ? `  # The observability A/B's peer: a JSON line per request to a file, as floodgate's access log.
  log_format json escape=json '{"time":"$msec","remoteAddress":"$remote_addr","method":"$request_method","url":"$request_uri","statusCode":$status,"bytesIn":$request_length,"bytesOut":$body_bytes_sent,"responseTime":$request_time}';
  access_log ${dir}/access.log json;`
    : '  access_log off;'
}
  # Connections are not recycled every 1,000 requests (the default, for HTTP/2 too): the load
  # clients keep theirs, as they do with the other peers.
  keepalive_requests 1000000;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  server {
    listen 127.0.0.1:${port}${tls ? ' ssl' : ''}${tls?.http2 ? ' http2' : ''};
${tls ? `    ssl_certificate ${tls.cert};\n    ssl_certificate_key ${tls.key};\n    ssl_protocols TLSv1.3;\n` : ''}    location /stream/files/ { alias ${root}/; }
    # The JSON workload's answer from the config itself, no application code: what this
    # machine allows a server to reach under the same wrk.
    location = /api/json { default_type application/json; return 200 '{"hello":"world"}'; }
  }
}
`,
  )
  const child = spawn(NGINX, ['-c', join(dir, 'nginx.conf'), '-p', dir, '-g', 'daemon off;'], { stdio: 'ignore' })
  const kill = () => child.kill('SIGKILL')
  process.on('exit', kill)
  await waitForPort(port)
  return {
    port,
    pids: () => [child.pid, ...childPids(child.pid)],
    stop: () =>
      new Promise((resolve) => {
        child.once('exit', () => {
          process.off('exit', kill)
          rmSync(dir, { recursive: true, force: true })
          resolve()
        })
        child.kill('SIGQUIT')
        setTimeout(() => child.kill('SIGKILL'), 3000)
      }),
    log: () => (existsSync(join(dir, 'error.log')) ? readFileSync(join(dir, 'error.log'), 'utf8') : ''),
  }
}
