#!/usr/bin/env python3
"""Python ftplib scenarios against a running ftpsgate, driven by the Rust integration tests.

Each scenario asserts what it checks and exits non-zero with a reason on failure. ftplib.FTP_TLS
does not resume the control connection's TLS session on data connections; ReusingFTP_TLS does,
as FileZilla, lftp and curl do, so both behaviours are covered.
"""

import argparse
import concurrent.futures
import ftplib
import hashlib
import io
import os
import random
import socket
import ssl
import sys
import time


class ReusingFTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control connection's TLS session."""

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(
                conn, server_hostname=self.host, session=self.sock.session
            )
        return conn, size


class ImplicitFTP_TLS(ReusingFTP_TLS):
    """Implicit FTPS: TLS from the first byte."""

    def connect(self, host="", port=0, timeout=-999, source_address=None):
        self.host, self.port = host, port
        if timeout != -999:
            self.timeout = timeout
        self.sock = socket.create_connection((host, port), self.timeout)
        self.af = self.sock.family
        self.sock = self.context.wrap_socket(self.sock, server_hostname=host)
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def context(args):
    ctx = ssl.create_default_context(cafile=args.ca)
    return ctx


def login(args, cls=ReusingFTP_TLS, prot_p=True, ctx=None):
    ftp = cls(context=ctx or context(args), timeout=30)
    if cls is ImplicitFTP_TLS:
        ftp.connect(args.host, args.implicit_port)
        ftp.login(args.user, args.password, secure=False)
    else:
        # --ipv6: the gateway's [::1] listener; ftplib then uses EPSV and EPRT by itself.
        ftp.connect("::1" if args.ipv6 else args.host, args.port6 if args.ipv6 else args.port)
        ftp.login(args.user, args.password)
    if args.active:
        ftp.set_pasv(False)
        if args.eprt:
            ftp.sendport = ftp.sendeprt
    if prot_p:
        ftp.prot_p()
    return ftp


def download(ftp, name, rest=None):
    buf = bytearray()
    ftp.retrbinary(f"RETR {name}", buf.extend, rest=rest)
    return bytes(buf)


def read_to_eof(s, limit=10):
    """Everything the peer sends until it closes (a reset counts as closed)."""
    s.settimeout(limit)
    got = b""
    try:
        while chunk := s.recv(4096):
            got += chunk
    except ConnectionResetError:
        pass
    return got


def reply_of(ftp, cmd):
    """The reply to `cmd`, whatever its class."""
    try:
        return ftp.sendcmd(cmd)
    except ftplib.all_errors as e:
        return str(e)


def check_serves(args):
    """A fresh session logs in and lists: the gateway still serves after whatever came before."""
    ftp = login(args)
    ftp.retrlines("LIST", lambda _l: None)
    ftp.quit()


def begin_download(args, name, size):
    """A session that has stored `size` random bytes as `name` and opened their RETR; returns
    the session, the bytes, and the data connection."""
    data = pattern(size)
    ftp = login(args)
    ftp.storbinary(f"STOR {name}", io.BytesIO(data), blocksize=1 << 20)
    return ftp, data, ftp.transfercmd(f"RETR {name}")


def store_and_fetch(ftp, name, data, what):
    """STOR `data` as `name`, RETR it back, and check the hash."""
    ftp.storbinary(f"STOR {name}", io.BytesIO(data))
    check(sha(download(ftp, name)) == sha(data), f"{what}: hash mismatch")


def pattern(size):
    return os.urandom(size)


# --- scenarios --------------------------------------------------------------------------------


def s_roundtrip(args):
    """Upload then download each size, PASV and EPSV, hashes equal."""
    for epsv in (False, True):
        ftp = login(args)
        if args.active and epsv:
            break  # one active round is enough; EPSV does not apply
        # ftplib uses EPSV only for IPv6; force it to exercise EPSV over IPv4.
        if epsv and not args.ipv6:
            ftp.makepasv = lambda f=ftp: ftplib.parse229(f.sendcmd("EPSV"), f.sock.getpeername())
        for size in args.sizes:
            data = pattern(size)
            name = f"py-{'epsv' if epsv else 'pasv'}-{size}.bin"
            ftp.storbinary(f"STOR {name}", io.BytesIO(data))
            check(sha(download(ftp, name)) == sha(data), f"{name}: hash mismatch")
            with open(os.path.join(args.root, name), "rb") as f:
                check(sha(f.read()) == sha(data), f"{name}: stored file differs")
        ftp.quit()
    print("roundtrip ok", args.sizes)


def s_parallel(args):
    """--count sessions at once from one address, each on a thread of its own: STOR --size
    bytes (plus its index) of its own, RETR them back, both hash-checked, the stored file too;
    PASV and EPSV alternating. --plain: ftplib's own FTP_TLS, whose data connections never
    resume TLS (the gateway must allow that)."""
    cls = ftplib.FTP_TLS if args.plain else ReusingFTP_TLS
    kind = "plain" if args.plain else "reuse"

    def one(i):
        try:
            ftp = login(args, cls=cls)
            if i % 2:
                ftp.makepasv = lambda f=ftp: ftplib.parse229(f.sendcmd("EPSV"), f.sock.getpeername())
            data = pattern(args.size + i)
            name = f"py-parallel-{kind}-{i}.bin"
            ftp.storbinary(f"STOR {name}", io.BytesIO(data))
            if sha(download(ftp, name)) != sha(data):
                return f"{name}: downloaded bytes differ"
            with open(os.path.join(args.root, name), "rb") as f:
                if sha(f.read()) != sha(data):
                    return f"{name}: stored bytes differ"
            ftp.quit()
            return None
        except Exception as e:  # a failed session is reported with the others, not lost
            return f"session {i}: {type(e).__name__}: {e}"

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.count) as pool:
        failed = [r for r in pool.map(one, range(args.count)) if r]
    check(not failed, "; ".join(failed))
    print(f"parallel ok: {args.count} {kind} sessions at once")


def s_implicit(args):
    ftp = login(args, cls=ImplicitFTP_TLS, prot_p=False)
    # Implicit FTPS: PROT P is assumed; send it anyway as clients do.
    ftp.voidcmd("PBSZ 0")
    ftp.voidcmd("PROT P")
    ftp._prot_p = True
    store_and_fetch(ftp, "implicit.bin", pattern(100_000), "implicit")
    ftp.quit()
    print("implicit ok")


def s_no_reuse_refused(args):
    """Plain FTP_TLS does not resume: the data connection must be refused, promptly, with 522,
    and the session must carry on."""
    ftp = login(args, cls=ftplib.FTP_TLS)
    start = time.monotonic()
    reply = None
    try:
        ftp.retrlines("LIST", lambda _l: None)
    except ftplib.error_perm as e:
        reply = str(e)
    except (ssl.SSLError, OSError, EOFError):
        try:
            ftp.voidresp()
        except ftplib.error_perm as e:
            reply = str(e)
    elapsed = time.monotonic() - start
    check(reply is not None and reply.startswith("522"), f"expected 522, got {reply!r}")
    check(elapsed < 10, f"refusal took {elapsed:.1f}s")
    check(ftp.voidcmd("NOOP").startswith("200"), "session unusable after refusal")
    ftp.quit()
    # And a client that does resume works right after.
    check_serves(args)
    print(f"no-reuse refused with {reply!r} in {elapsed:.2f}s")


def s_no_reuse_allowed(args):
    ftp = login(args, cls=ftplib.FTP_TLS)
    store_and_fetch(ftp, "noreuse.bin", pattern(50_000), "no reuse")
    ftp.quit()
    print("no-reuse allowed ok")


def s_rest(args):
    data = pattern(1_000_000)
    ftp = login(args)
    ftp.storbinary("STOR rest.bin", io.BytesIO(data))
    got = download(ftp, "rest.bin", rest=123_457)
    check(sha(got) == sha(data[123_457:]), "REST: wrong suffix")
    ftp.quit()
    print("rest ok")


def s_appe(args):
    a, b = pattern(70_000), pattern(30_001)
    ftp = login(args)
    ftp.storbinary("STOR appe.bin", io.BytesIO(a))
    ftp.storbinary("APPE appe.bin", io.BytesIO(b))
    check(sha(download(ftp, "appe.bin")) == sha(a + b), "APPE: wrong content")
    ftp.quit()
    print("appe ok")


def s_stou(args):
    data = pattern(12_345)
    ftp = login(args)
    before = set(ftp.nlst())
    reply = ftp.storbinary("STOU", io.BytesIO(data))
    check(reply.startswith("226"), f"STOU: {reply}")
    new = set(ftp.nlst()) - before
    check(len(new) == 1, f"STOU created {new}")
    name = new.pop()
    check(sha(download(ftp, name)) == sha(data), "STOU: wrong content")
    ftp.quit()
    print("stou ok", name)


def s_listings(args):
    ftp = login(args)
    ftp.storbinary("STOR listed.txt", io.BytesIO(b"x"))
    lines = []
    ftp.retrlines("LIST", lines.append)
    check(any("listed.txt" in l for l in lines), f"LIST: {lines}")
    check("listed.txt" in ftp.nlst(), "NLST")
    if args.mlsd:
        names = [n for n, _facts in ftp.mlsd()]
        check("listed.txt" in names, f"MLSD: {names}")
    ftp.quit()
    print("listings ok")


def s_abort(args):
    """ABOR during a download: 426 for the transfer, then ABOR's own 2xx, then the session
    goes on with another, complete transfer."""
    ftp, data, conn = begin_download(args, "big.bin", 64 * 1024 * 1024)
    got = conn.recv(65536)
    check(len(got) > 0, "no data before ABOR")
    ftp.putcmd("ABOR")
    first = ftp.getmultiline()
    conn.close()
    second = ftp.getmultiline()
    check(first[:3] in ("426", "226"), f"transfer reply after ABOR: {first}")
    check(second[:3] in ("225", "226"), f"ABOR reply: {second}")
    store_and_fetch(ftp, "after-abor.bin", pattern(10_000), "transfer after ABOR")
    ftp.quit()
    print("abort ok", first, second)


def s_abort_storm(args):
    """ABOR at random points of downloads and uploads, --count times each (--seed): every ABOR
    is answered, the transfer's reply then ABOR's 2xx, within a few seconds, and a whole
    transfer works after each one."""
    rng = random.Random(args.seed)
    ftp = login(args)
    ftp.voidcmd("TYPE I")
    big = pattern(4 << 20)
    ftp.storbinary("STOR storm.bin", io.BytesIO(big), blocksize=1 << 20)
    small = pattern(20_000)
    worst = 0.0
    codes = {}
    for i in range(args.count):
        for direction in ("download", "upload"):
            if direction == "download":
                conn = ftp.transfercmd("RETR storm.bin")
                want = rng.randrange(0, len(big))
                got = 0
                while got < want:
                    chunk = conn.recv(min(1 << 16, want - got))
                    if not chunk:
                        break
                    got += len(chunk)
            else:
                conn = ftp.transfercmd(f"STOR storm-up-{i}.bin")
                conn.sendall(big[: rng.randrange(0, 2 << 20)])
            began = time.monotonic()
            ftp.putcmd("ABOR")
            conn.close()
            first = ftp.getmultiline()
            second = ftp.getmultiline()
            took = time.monotonic() - began
            worst = max(worst, took)
            key = (direction, first[:3], second[:3])
            codes[key] = codes.get(key, 0) + 1
            check(first[:3] in ("426", "226", "250"), f"{direction} {i}: transfer reply {first!r}")
            check(second[:3] in ("225", "226"), f"{direction} {i}: ABOR reply {second!r}")
            check(took < 6, f"{direction} {i}: ABOR answered after {took:.1f}s")
            # In step: the next transfer works, whole.
            name = f"after-{i}-{direction}.bin"
            store_and_fetch(ftp, name, small, f"transfer after ABOR {i} ({direction})")
    ftp.quit()
    print(f"{2 * args.count} ABORs answered, slowest {worst:.2f}s: {codes}")


def s_feat(args):
    """FEAT before AUTH TLS is the gateway's own answer (it does not reach for the backend
    before TLS); after it, the backend's features are listed too."""
    ftp = ftplib.FTP_TLS(context=context(args), timeout=30)
    ftp.connect("127.0.0.1", args.port)
    feats_of = lambda resp: [l.strip() for l in resp.splitlines()[1:-1]]
    before = feats_of(ftp.sendcmd("FEAT"))
    ftp.auth()
    after = feats_of(ftp.sendcmd("FEAT"))
    for feats in (before, after):
        for f in ("AUTH TLS", "PBSZ", "PROT", "EPSV"):
            check(f in feats, f"FEAT lacks {f}: {feats}")
        check(not any(f.startswith("EPRT") for f in feats), f"FEAT offers EPRT: {feats}")
    for f in args.expect_feat:
        check(f not in before, f"FEAT before TLS names backend feature {f}: {before}")
        check(f in after, f"FEAT lacks backend feature {f}: {after}")
    ftp.close()
    print("feat ok", before, after)


def s_user_before_tls(args):
    """USER before AUTH TLS is refused locally (530), never forwarded."""
    s = socket.create_connection(("127.0.0.1", args.port), timeout=10)
    f = s.makefile("rb")
    check(f.readline().startswith(b"220"), "greeting")
    s.sendall(b"USER " + args.user.encode() + b"\r\n")
    line = f.readline()
    check(line.startswith(b"530"), f"USER before AUTH: {line!r}")
    s.sendall(b"QUIT\r\n")
    s.close()
    check_serves(args)
    print("user-before-tls ok")


def s_bad_lines(args):
    """An overlong line, a bare LF, a NUL, a bare CR: each 500, and the session carries on."""
    ftp = login(args)
    try:
        ftp.sendcmd("NOOP " + "A" * 5000)
        fail("overlong line accepted")
    except ftplib.error_perm as e:
        check(str(e).startswith("500"), f"overlong: {e}")
    check(ftp.voidcmd("NOOP").startswith("200"), "NOOP after overlong line")
    for bad in (b"NOOP\n", b"NO\x00OP\r\n", b"NO\rOP\r\n"):
        ftp.sock.sendall(bad)
        resp = ftp.getline()
        check(resp.startswith("500"), f"{bad!r}: {resp}")
    check(ftp.voidcmd("NOOP").startswith("200"), "NOOP after bad lines")
    ftp.quit()
    print("bad-lines ok")


def s_unsupported_commands(args):
    """What the proxy does not carry gets its own code; a transfer without PASV 425; PASV
    after EPSV ALL 501. The session carries on through all of them."""
    ftp = login(args)
    for cmd, code in (("CCC", "534"), ("ADAT x", "502"), ("LPSV", "502"), ("PROT C", "534"),
                      ("PROT S", "536"), ("PROT Q", "504"), ("PBSZ x", "501"),
                      ("REIN", "502"), ("AUTH TLS", "503"), ("EPSV 2", "522")):
        try:
            resp = ftp.sendcmd(cmd)
        except (ftplib.error_perm, ftplib.error_temp) as e:
            resp = str(e)
        check(resp.startswith(code), f"{cmd}: want {code}, got {resp}")
    try:
        ftp.sendcmd("LIST")
        fail("LIST without PASV accepted")
    except ftplib.error_temp as e:
        check(str(e).startswith("425"), f"LIST without PASV: {e}")
    check(ftp.sendcmd("EPSV ALL").startswith("200"), "EPSV ALL")
    try:
        ftp.sendcmd("PASV")
        fail("PASV after EPSV ALL accepted")
    except ftplib.error_perm as e:
        check(str(e).startswith("501"), f"PASV after EPSV ALL: {e}")
    ftp.quit()
    print("unsupported-commands ok")


def s_bad_handshakes(args):
    """Garbage instead of a TLS handshake after AUTH TLS, and plaintext on the implicit
    port: closed, with at most a TLS alert (content type 21) on the way out."""
    s = socket.create_connection(("127.0.0.1", args.port), timeout=10)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"AUTH TLS\r\n")
    check(f.readline().startswith(b"234"), "AUTH TLS")
    s.sendall(b"this is not a TLS ClientHello\r\n" * 10)
    got = read_to_eof(s)
    check(got == b"" or got[0] == 0x15, f"garbage handshake answered with {got!r}")
    s.close()
    s = socket.create_connection(("127.0.0.1", args.implicit_port), timeout=10)
    s.sendall(b"USER plaintext-on-implicit\r\n")
    got = read_to_eof(s)
    check(got == b"" or got[0] == 0x15, f"implicit port answered plaintext with {got!r}")
    s.close()
    check_serves(args)
    print("bad-handshakes ok")


def s_pipelined_after_auth(args):
    """Plaintext pipelined behind AUTH TLS is refused (STARTTLS injection): 421 and closed."""
    s = socket.create_connection(("127.0.0.1", args.port), timeout=10)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"AUTH TLS\r\nUSER injected\r\n")
    line = f.readline()
    check(line.startswith(b"421") or line == b"", f"pipelined after AUTH: {line!r}")
    s.close()
    check_serves(args)
    print("pipelined-after-auth ok")


def s_foreign_data_peer(args):
    """A data connection from another address (127.0.0.2) is refused; the real client's
    connection on the same port still works."""
    ftp = login(args)
    resp = ftp.sendcmd("PASV")
    host, port = ftplib.parse227(resp)
    thief = socket.create_connection((host, port), timeout=10, source_address=("127.0.0.2", 0))
    thief.settimeout(10)
    try:
        got = thief.recv(10)
    except (ConnectionResetError, socket.timeout) as e:
        got = e
    check(got == b"" or isinstance(got, ConnectionResetError), f"thief got {got!r}")
    thief.close()
    conn = socket.create_connection((host, port), timeout=10)
    ftp.putcmd("LIST")
    resp = ftp.getresp()
    check(resp.startswith("1"), f"LIST: {resp}")
    conn = ftp.context.wrap_socket(conn, server_hostname=ftp.host, session=ftp.sock.session)
    listing = b""
    while chunk := conn.recv(65536):
        listing += chunk
    conn.unwrap()
    conn.close()
    check(ftp.voidresp().startswith("226"), "LIST final reply")
    ftp.quit()
    print("foreign data peer refused; real client served", len(listing), "bytes")


def s_pool_exhausted(args):
    """With a one-port pool and timeouts.passive_wait_secs = 2: a second session's PASV from the
    same address, while the first's lease is pending and never used, waits the 2 s for the port
    and then gets 425; after the first session's lease goes, the port is free again."""
    a = login(args)
    a.storbinary("STOR pool.bin", io.BytesIO(b"p" * 1000))
    a.sendcmd("PASV")
    b = login(args)
    start = time.monotonic()
    try:
        b.sendcmd("PASV")
        fail("second PASV from the same address succeeded while the port was pending")
    except ftplib.error_temp as e:
        check(str(e).startswith("425"), f"exhausted pool: {e}")
    waited = time.monotonic() - start
    check(1.5 < waited < 10, f"425 after {waited:.1f} s, not after the 2 s wait")
    a.sendcmd("EPSV")  # the session's old lease goes back first, so this still works
    a.quit()
    time.sleep(0.2)
    check(download(b, "pool.bin") == b"p" * 1000, "pool did not recover")
    b.quit()
    print("pool exhausted ok")


def s_quit_midway(args):
    ftp = login(args)
    ftp.sendcmd("PASV")
    resp = ftp.sendcmd("QUIT")
    check(resp.startswith("221"), f"QUIT: {resp}")
    check(ftp.sock.recv(10) == b"", "connection stays open after QUIT")
    check_serves(args)
    print("quit ok")


def s_client_vanishes(args):
    """Client disappears mid-download and mid-upload; the gateway carries on."""
    ftp, data, conn = begin_download(args, "vanish.bin", 8 * 1024 * 1024)
    conn.recv(1000)
    conn.close()
    ftp.sock.close()
    ftp = login(args)
    conn = ftp.transfercmd("STOR vanish-up.bin")
    conn.sendall(data[:1_000_000])
    # close() without unwrap(): FIN but no TLS close_notify, i.e. a truncated upload.
    conn.close()
    try:
        resp = ftp.voidresp()
        fail(f"truncated upload accepted: {resp}")
    except (ftplib.error_temp, ftplib.error_perm) as e:
        check(str(e)[:3] in ("426", "451", "550"), f"truncated upload reply: {e}")
    ftp.quit()
    ftp = login(args)
    check(sha(download(ftp, "vanish.bin")) == sha(data), "file damaged")
    ftp.quit()
    print("client vanishes ok")


def s_backend_down(args):
    """The gateway greets by itself and reaches for the backend once TLS is up and a command
    needs it: a dead backend is then a 421."""
    ftp = ReusingFTP_TLS(context=context(args), timeout=20)
    welcome = ftp.connect("127.0.0.1", args.port)
    check(welcome.startswith("220"), f"greeting: {welcome!r}")
    ftp.auth()
    try:
        resp = ftp.sendcmd(f"USER {args.user}")
        fail(f"dead backend answered {resp!r}")
    except ftplib.error_temp as e:
        check(str(e).startswith("421"), f"dead backend: {e}")
    print("backend down ok")


def s_backend_drops(args):
    """The backend greets, then drops the connection at the first forwarded command."""
    ftp = ReusingFTP_TLS(context=context(args), timeout=20)
    ftp.connect("127.0.0.1", args.port)
    ftp.auth()
    try:
        resp = ftp.sendcmd("USER someone")
        fail(f"got {resp}")
    except ftplib.error_temp as e:
        check(str(e).startswith("421"), f"backend dropped: {e}")
    print("backend drops ok")


def s_cross_session(args):
    """The TLS binding of data connections, with a server that takes any user (--expect is the
    hash of the file it serves as "blob"):
    - a sibling (same address, same user, same route) may lend its TLS session, as Go's one
      session cache per host makes rclone do: the transfer works;
    - a neighbour behind the same NAT (same address, *another user*) connecting across the pool
      with its own session is refused, and the wait goes on: the client's own connection,
      after it, carries the transfer;
    - with no connection of its own, the client hears 522 at the data connection deadline
      (--deadline seconds)."""
    ctx = context(args)

    def session(user):
        ftp = ReusingFTP_TLS(context=ctx, timeout=30)
        ftp.connect("127.0.0.1", args.port)
        ftp.auth()
        ftp.login(user, "pw")
        ftp.prot_p()
        ftp.voidcmd("TYPE I")
        return ftp

    b = session(args.user)
    sibling = session(args.user)
    neighbour = session(args.user + "-neighbour")

    def connect(host, port, lender):
        raw = socket.create_connection((host, port), timeout=10)
        return ctx.wrap_socket(raw, server_hostname=b.host, session=lender.sock.session)

    def attempt(host, port, lender):
        """What a connection lending `lender`'s session gets: nothing, and closed."""
        try:
            conn = connect(host, port, lender)
            got = conn.recv(100)
            conn.close()
            return got
        except (ssl.SSLError, OSError):
            return b""

    def read_all(conn):
        got = b""
        while chunk := conn.recv(65536):
            got += chunk
        conn.close()
        return got

    # A sibling's session: resumed, and the transfer is whole.
    host, port = ftplib.parse227(b.sendcmd("PASV"))
    b.putcmd("RETR blob")
    check(b.getresp().startswith("1"), "RETR preliminary reply")
    conn = connect(host, port, sibling)
    check(conn.session_reused, "a sibling's TLS session was not resumed")
    got = read_all(conn)
    check(b.voidresp().startswith("226"), "transfer over a sibling's TLS session")
    check(sha(got) == args.expect, "download over a sibling's session: hash mismatch")

    # The neighbour first, then the client's own connection: the transfer arrives whole.
    host, port = ftplib.parse227(b.sendcmd("PASV"))
    b.putcmd("RETR blob")
    check(b.getresp().startswith("1"), "RETR preliminary reply")
    check(attempt(host, port, neighbour) == b"", "another user's TLS session carried data")
    got = read_all(connect(host, port, b))
    check(b.voidresp().startswith("226"), "the client's own transfer after the neighbour's")
    check(sha(got) == args.expect, "download after a neighbour's attempt: hash mismatch")

    # The neighbour alone: 522 once the deadline passes, not before.
    host, port = ftplib.parse227(b.sendcmd("PASV"))
    b.putcmd("RETR blob")
    check(b.getresp().startswith("1"), "RETR preliminary reply")
    start = time.monotonic()
    check(attempt(host, port, neighbour) == b"", "another user's TLS session carried data")
    reply = None
    try:
        b.voidresp()
    except ftplib.error_perm as e:
        reply = str(e)
    elapsed = time.monotonic() - start
    check(reply is not None and reply.startswith("522"), f"expected 522, got {reply!r}")
    check(args.deadline - 1.5 <= elapsed < args.deadline + 8, f"522 after {elapsed:.1f}s")
    # Every session carries on.
    for ftp in (b, sibling, neighbour):
        check(ftp.voidcmd("NOOP").startswith("200"), "session after the refusals")
        ftp.quit()
    print(f"sibling served, neighbour refused, client served; alone: {reply!r} after {elapsed:.2f}s")


def s_uploads(args):
    """Sequential uploads in one session, each checked on the backend's disk."""
    ftp = login(args)
    for i in range(args.count):
        data = pattern(args.size)
        name = f"seq-{i}.bin"
        ftp.storbinary(f"STOR {name}", io.BytesIO(data), blocksize=1 << 20)
        with open(os.path.join(args.root, name), "rb") as f:
            stored = f.read()
        check(sha(stored) == sha(data), f"{name}: stored {len(stored)} of {len(data)} bytes")
    ftp.quit()
    print(f"{args.count} uploads of {args.size} bytes arrived whole")


def s_clear_data(args):
    """PROT C toward the client (allowed by config) while the backend side stays as configured."""
    ftp = login(args, prot_p=False)
    ftp.prot_c()
    store_and_fetch(ftp, "clear.bin", pattern(300_000), "PROT C")
    ftp.quit()
    print("clear data ok")


def s_bounce(args):
    """PORT and EPRT aimed anywhere but the client's own address, or at a port below 1024, are
    refused; then an honest active transfer works."""
    ftp = login(args)
    for cmd, code in (
        ("PORT 127,0,0,3,195,80", "500"),   # another host: FTP bounce
        ("PORT 127,0,0,1,0,25", "504"),     # a privileged port (SMTP)
        ("EPRT |1|127.0.0.3|50000|", "500"),
        ("EPRT |2|::1|50000|", "500"),      # the other family, not the control peer
        ("EPRT |3|x|50000|", "522"),        # unknown network protocol
        ("PORT 127,0,0,1", "501"),
        ("EPRT |1|127.0.0.1|", "501"),
    ):
        try:
            resp = ftp.sendcmd(cmd)
        except (ftplib.error_perm, ftplib.error_temp) as e:
            resp = str(e)
        check(resp.startswith(code), f"{cmd}: want {code}, got {resp}")
    ftp.set_pasv(False)
    store_and_fetch(ftp, "after-bounce.bin", pattern(40_000), "active after refusals")
    ftp.quit()
    print("bounce attempts refused")


def s_pasv_over_ipv6(args):
    ftp = login(args)
    resp = reply_of(ftp, "PASV")
    check(resp.startswith("522"), f"PASV over IPv6: {resp}")
    resp = reply_of(ftp, "EPSV 1")
    check(resp.startswith("522"), f"EPSV 1 over IPv6: {resp}")
    store_and_fetch(ftp, "v6.bin", pattern(70_000), "EPSV over IPv6")
    ftp.quit()
    print("PASV over IPv6 refused; EPSV works")


def s_commands(args):
    """The rest of the command set passes through and answers correctly."""
    plain = ftplib.FTP()
    plain.connect("127.0.0.1", args.port)
    # HOST before AUTH TLS and USER (RFC 7151): the gateway answers it, and the backend hears it
    # once it is connected (after TLS).
    resp = plain.sendcmd("HOST localhost")
    check(resp.startswith("220"), f"HOST: {resp}")
    plain.close()

    ftp = login(args)
    data = pattern(12_345)
    ftp.storbinary("STOR cmd.bin", io.BytesIO(data))
    check(ftp.size("cmd.bin") == len(data), "SIZE")
    check(ftp.sendcmd("MDTM cmd.bin").startswith("213 "), "MDTM")
    check(ftp.sendcmd("TYPE A").startswith("200"), "TYPE A")
    check(ftp.sendcmd("TYPE I").startswith("200"), "TYPE I")
    # Servers differ in what they make of these; each must get the backend's own answer.
    for cmd in ("MODE S", "STRU F", "ALLO 12345", "OPTS UTF8 ON", "SITE HELP"):
        resp = reply_of(ftp, cmd)
        check(resp[:3].isdigit() and resp[0] in "2345", f"{cmd}: {resp!r}")
    ftp.rename("cmd.bin", "renamed.bin")
    check("renamed.bin" in ftp.nlst(), "RNFR/RNTO")
    ftp.mkd("dir-ü")
    ftp.cwd("dir-ü")
    store_and_fetch(ftp, "inner-é.bin", pattern(999), "UTF-8 path")
    ftp.cwd("..")
    check("dir-ü" in ftp.nlst(), f"UTF-8 listing: {ftp.nlst()}")
    ftp.delete("dir-ü/inner-é.bin")
    ftp.rmd("dir-ü")
    ftp.delete("renamed.bin")
    check("renamed.bin" not in ftp.nlst(), "DELE")
    stat = ftp.sendcmd("STAT")
    check(stat.startswith("211"), f"STAT: {stat}")
    help_ = ftp.sendcmd("HELP")
    check(help_[:3] in ("211", "214"), f"HELP: {help_}")
    resp = reply_of(ftp, "XYZZY plugh")
    check(resp[:3] in ("500", "502"), f"unknown command: {resp}")
    if args.mlsd:
        mlst = ftp.sendcmd("MLST .")
        check(mlst.startswith("250-") and len(mlst.splitlines()) >= 3, f"MLST multi-line: {mlst!r}")
    ftp.quit()
    print("commands ok")


def s_stat_during_transfer(args):
    ftp, data, conn = begin_download(args, "stat.bin", 32 * 1024 * 1024)
    got = conn.recv(65536)
    ftp.putcmd("STAT")
    status = ftp.getmultiline()
    check(status.startswith("211"), f"STAT during transfer: {status}")
    check("bytes so far" in status, f"STAT during transfer: {status}")
    while chunk := conn.recv(1 << 20):
        got += chunk
    conn.unwrap()
    conn.close()
    check(ftp.voidresp().startswith("226"), "transfer after STAT")
    check(sha(got) == sha(data), "download with STAT in the middle")
    ftp.quit()
    print("stat during transfer ok:", status.splitlines()[1].strip())


def s_balanced(args):
    """Sessions through a load balancer that sends PROXY v2 to several replicas: each logs in,
    uploads and downloads (PASV and EPSV alternating), every byte checked; and a port thief at
    another address, also through the balancer, is refused a data connection."""
    src = (args.source, 0)
    thief_src = (args.thief, 0)
    for i in range(args.count):
        ftp = ReusingFTP_TLS(context=context(args), timeout=30, source_address=src)
        ftp.connect("127.0.0.1", args.port)
        ftp.login(args.user, args.password)
        ftp.prot_p()
        if i % 2:
            ftp.makepasv = lambda f=ftp: ftplib.parse229(f.sendcmd("EPSV"), f.sock.getpeername())
        data = random.Random(i).randbytes(random.Random(-i).randrange(1, 256 * 1024))
        name = f"lb-{i}.bin"
        ftp.storbinary(f"STOR {name}", io.BytesIO(data))
        with open(os.path.join(args.root, name), "rb") as f:
            check(sha(f.read()) == sha(data), f"{name}: stored bytes differ")
        if i == 0:
            # The thief connects to the data port first; the gateway must see its real
            # address in the PROXY header and close it, then serve the real client.
            host, port = ftp.makepasv()
            thief = socket.create_connection((host, port), timeout=10, source_address=thief_src)
            check(read_to_eof(thief) == b"", "the thief got data")
            conn = socket.create_connection((host, port), timeout=10, source_address=src)
            conn = ftp.context.wrap_socket(conn, server_hostname=ftp.host, session=ftp.sock.session)
            resp = ftp.sendcmd(f"RETR {name}")
            check(resp.startswith("150"), f"RETR: {resp}")
            back = bytearray()
            while chunk := conn.recv(65536):
                back.extend(chunk)
            conn.unwrap()
            conn.close()
            check(ftp.voidresp().startswith("226"), "226")
            back = bytes(back)
        else:
            back = download(ftp, name)
        check(sha(back) == sha(data), f"{name}: downloaded bytes differ")
        ftp.quit()
    print(f"balanced: {args.count} sessions ok")


def s_host(args):
    """HOST (RFC 7151) before USER picks the server: the file downloaded is that server's own
    (--expect is its hash), an upload lands in its root (--root), and HOST after USER is 503."""
    ftp = ReusingFTP_TLS(context=context(args), timeout=30)
    ftp.connect("127.0.0.1", args.port)
    ftp.auth()
    resp = ftp.sendcmd(f"HOST {args.host_name}")
    check(resp.startswith("220"), f"HOST: {resp}")
    ftp.login(args.user, args.password)
    ftp.prot_p()
    check(sha(download(ftp, args.name)) == args.expect, f"{args.name} came from another server")
    data = random.Random(7151).randbytes(300_000)
    ftp.storbinary("STOR host-up.bin", io.BytesIO(data))
    with open(os.path.join(args.root, "host-up.bin"), "rb") as f:
        check(sha(f.read()) == sha(data), "host-up.bin: stored bytes differ")
    late = reply_of(ftp, f"HOST {args.host_name}")
    check(late.startswith("503"), f"HOST after USER: {late}")
    ftp.quit()
    print(f"host: {args.host_name} served {args.name} and stored host-up.bin; late HOST: {late}")


def s_host_conflict(args):
    """Rules apply in order: a session whose TLS server name (SNI: the host connected to,
    --host-name's route being another) chose a route may not move elsewhere with HOST."""
    ftp = ReusingFTP_TLS(context=context(args), timeout=30)
    ftp.connect("localhost", args.port)
    ftp.auth()
    resp = reply_of(ftp, f"HOST {args.host_name}")
    check(resp.startswith("504"), f"HOST to another route after SNI: {resp}")
    ftp.login(args.user, args.password)
    ftp.quit()
    print(f"host conflict: {resp}")


def secured_from(args, source):
    """A control connection from `source`, after AUTH TLS, not logged in."""
    ftp = ReusingFTP_TLS(context=context(args), timeout=30, source_address=(source, 0))
    ftp.connect(args.host, args.port)
    ftp.auth()
    return ftp


def s_bans(args):
    """--failures wrong passwords from --source, each answered only after --delay seconds,
    ban it: a new connection hears 421 at once, and a session opened before the ban hears 421
    at its next login attempt, even with the right password; --other logs in meanwhile."""
    waiting = secured_from(args, args.source)
    for i in range(args.failures):
        ftp = secured_from(args, args.source)
        started = time.monotonic()
        try:
            ftp.login(args.user, f"wrong-{i}")
            fail("a wrong password was accepted")
        except ftplib.error_perm as e:
            check(str(e).startswith("530"), f"wrong password {i}: {e}")
        took = time.monotonic() - started
        check(took >= args.delay * 0.9, f"failed login answered after {took:.2f}s, within the delay")
        ftp.close()
    try:
        secured_from(args, args.source)
        fail("the banned address got in")
    except ftplib.error_temp as e:
        check(str(e).startswith("421"), f"banned connection: {e}")
    try:
        waiting.login(args.user, args.password)
        fail("the session opened before the ban logged in")
    except ftplib.error_temp as e:
        check(str(e).startswith("421"), f"banned session: {e}")
    other = secured_from(args, args.other)
    other.login(args.user, args.password)
    other.quit()
    print(f"{args.source} banned after {args.failures} failures; {args.other} logged in")


def s_login_from(args):
    """The right password from --source logs in."""
    ftp = secured_from(args, args.source)
    ftp.login(args.user, args.password)
    ftp.quit()
    print(f"{args.source} logged in")


SCENARIOS = {name[2:].replace("_", "-"): fn for name, fn in globals().items() if name.startswith("s_")}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--host", default="127.0.0.1", help="the gateway's IPv4 address")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--implicit-port", type=int, required=True)
    p.add_argument("--port6", type=int, required=True)
    p.add_argument("--ipv6", action="store_true", help="use the [::1] listener")
    p.add_argument("--active", action="store_true", help="PORT (EPRT over IPv6) instead of PASV")
    p.add_argument("--eprt", action="store_true", help="with --active: EPRT over IPv4 too")
    p.add_argument("--ca", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 1 << 20])
    p.add_argument("--mlsd", action="store_true")
    p.add_argument("--plain", action="store_true", help="parallel: ftplib's FTP_TLS, no TLS reuse")
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--size", type=int, default=10 << 20)
    p.add_argument("--expect-feat", action="append", default=[])
    p.add_argument("--source", default="127.0.0.1", help="client source address")
    p.add_argument("--thief", default="127.0.0.7", help="source address of a port thief")
    p.add_argument("--host-name", help="host: the name sent in HOST")
    p.add_argument("--name", help="host: the file to download")
    p.add_argument("--expect", help="host: the SHA-256 it must have")
    p.add_argument("--deadline", type=float, default=30, help="timeouts.data_connection_secs")
    p.add_argument("--seed", type=int, default=959)
    p.add_argument("--other", default="127.0.0.8", help="bans: an address that is not banned")
    p.add_argument("--failures", type=int, default=3, help="bans: access.max_failed_logins")
    p.add_argument("--delay", type=float, default=1, help="bans: access.failed_login_delay_secs")
    args = p.parse_args()
    SCENARIOS[args.scenario](args)


if __name__ == "__main__":
    main()
