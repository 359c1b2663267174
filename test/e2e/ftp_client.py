#!/usr/bin/env python3
"""An FTP client for the end-to-end FTP scenarios, on Python's ftplib (stdlib only).

One session: log in, optionally list a folder, download a file, upload a file,
with the data connections opened in the mode asked for:

  pasv   PASV, connecting to the address the 227 names (not the control peer)
  epsv   EPSV
  port   PORT naming the client's own address
  eprt   EPRT naming the client's own address
  auto-passive, auto-active
         ftplib's own choice: PASV/PORT over IPv4, EPSV/EPRT over IPv6

What the relay answered to each data-port command is printed as
"reply CMD: TEXT", so that the scenario can check it (the 227 must name the
WAN address, not the LAN one).

--foreign ADDR (passive modes): before the download's data connection, a
second socket bound to ADDR (a third address, neither the client's nor the
server's) connects to the port the 227/229 named. It must be turned away
(printed: "foreign ADDR -> HOST:PORT: reset|eof|refused|timeout|data"); then
the client itself connects to the same port and the download must succeed.

--hold DIR (active modes): after the PORT/EPRT of the download is answered,
write DIR/port-sent and wait (at most 15 s) for DIR/go before sending RETR, so
that the scenario can try the relay's LAN-side listener from another address.

--refuse CMD (repeatable): send CMD as is and print the reply, which must be an
error ("refused CMD: 500 ..."); status 1 if the command was accepted.

--abort REMOTE: RETR REMOTE (binary, in the session's data mode), read
--abort-read bytes of it (256 KiB), then, with the data connection still open
and no longer read, abort as RFC 959 says and BSD ftp does: Telnet IP and
Synch ("IAC IP IAC" with MSG_OOB, the last IAC urgent), then "DM ABOR\r\n";
wait (--abort-wait seconds, 5) for the replies. Prints "abort codes: A B in N
ms" (the transfer's reply, then the ABOR's; each also as "abort reply: TEXT"),
then reads the data connection to its end: "abort data: eof|reset|timeout
after N more bytes in M ms, T of SIZE in all", then sends NOOP: "abort noop:
REPLY". Runs before --get, so that a complete download on the same control
connection can follow. (ftplib's own abort(), a bare "ABOR\r\n" sent as
urgent data, is answered "500 Unknown command" by both vsftpd, which takes the
4 bytes before ABOR for the Telnet IP and Synch, and pure-ftpd, directly.)

--rounds N: N data channels in a row on this control connection, the data
command alternating between the two of --round-modes (pasv,port; epsv,eprt over
IPv6), the transfer between LIST --round-list and RETR --round-get (sha256 of
what came, in memory), so that each command meets each mode: round i does
LIST for i % 4 in (0, 3), RETR otherwise. Prints "round I MODE list: NAMES" or
"round I MODE retr: SIZE SHA256".

--resume REMOTE LOCAL: LOCAL holds the beginning of REMOTE (N bytes); REST N
and RETR REMOTE append the rest (ftplib's retrbinary(rest=N)), in the
session's data mode. Prints "resume REMOTE from N: M bytes".

Exit status 0 if every step worked; the error otherwise.
"""
import argparse
import ftplib
import hashlib
import os
import socket
import sys
import time

DATA_COMMANDS = ("PASV", "EPSV", "PORT", "EPRT")
NOTED_COMMANDS = DATA_COMMANDS + ("REST",)


class Client(ftplib.FTP):
    mode = "auto-passive"
    trust_server_pasv_ipv4_address = True   # use the 227's address: it must be reachable
    last_cmd = None

    def putcmd(self, line):
        self.last_cmd = line.split(" ", 1)[0].upper()
        super().putcmd(line)

    def getresp(self):
        try:
            resp = super().getresp()
        except ftplib.Error as e:
            resp = str(e)
            self.note(resp)
            raise
        self.note(resp)
        return resp

    def note(self, resp):
        if self.last_cmd in NOTED_COMMANDS:
            print(f"reply {self.last_cmd}: {resp}", flush=True)
            self.last_cmd = None

    def makepasv(self):
        if self.mode == "pasv":
            host, port = ftplib.parse227(self.sendcmd("PASV"))
            return host, port
        if self.mode == "epsv":
            return ftplib.parse229(self.sendcmd("EPSV"), self.sock.getpeername())
        return super().makepasv()

    def makeport(self):
        if self.mode not in ("port", "eprt"):
            return super().makeport()
        host = self.sock.getsockname()[0]
        sock = socket.create_server((host, 0), family=self.af, backlog=1)
        port = sock.getsockname()[1]
        if self.mode == "port":
            self.sendport(host, port)
        else:
            self.sendeprt(host, port)
        if self.timeout is not None:
            sock.settimeout(self.timeout)
        return sock


def foreign_try(addr, family, host, port):
    """A connection to host:port from addr: what it sees."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.bind((addr, 0))
        try:
            s.connect((host, port))
        except ConnectionRefusedError:
            return "refused"
        except ConnectionResetError:   # the reset came before connect() returned
            return "reset"
        except socket.timeout:
            return "timeout"
        try:
            data = s.recv(100)
            return "data" if data else "eof"
        except ConnectionResetError:
            return "reset"
        except socket.timeout:
            return "timeout"
    finally:
        s.close()


def get_foreign(ftp, remote, local, foreign):
    """RETR in a passive mode, with a connection from a third address first."""
    ftp.voidcmd("TYPE I")
    if ftp.mode == "pasv":
        host, port = ftplib.parse227(ftp.sendcmd("PASV"))
    else:
        host, port = ftplib.parse229(ftp.sendcmd("EPSV"), ftp.sock.getpeername())
    t0 = time.monotonic()
    outcome = foreign_try(foreign, ftp.af, host, port)
    print(f"foreign {foreign} -> {host}:{port}: {outcome} after "
          f"{int((time.monotonic() - t0) * 1000)} ms", flush=True)
    conn = socket.create_connection((host, port), ftp.timeout)
    with conn, open(local, "wb") as out:
        resp = ftp.sendcmd("RETR " + remote)
        if resp[0] != "1":
            raise ftplib.error_reply(resp)
        while True:
            block = conn.recv(65536)
            if not block:
                break
            out.write(block)
    ftp.voidresp()


def get_held(ftp, remote, local, hold):
    """RETR in an active mode, waiting for DIR/go between PORT/EPRT and RETR."""
    ftp.voidcmd("TYPE I")
    with ftp.makeport() as sock:
        open(os.path.join(hold, "port-sent"), "w").close()
        go = os.path.join(hold, "go")
        deadline = time.monotonic() + 15
        while not os.path.exists(go):
            if time.monotonic() > deadline:
                raise TimeoutError("no go from the scenario within 15 s")
            time.sleep(0.02)
        resp = ftp.sendcmd("RETR " + remote)
        if resp[0] != "1":
            raise ftplib.error_reply(resp)
        conn, _ = sock.accept()
    with conn, open(local, "wb") as out:
        conn.settimeout(ftp.timeout)
        while True:
            block = conn.recv(65536)
            if not block:
                break
            out.write(block)
    ftp.voidresp()


def set_mode(ftp, mode):
    ftp.mode = mode
    ftp.set_pasv(mode in ("pasv", "epsv", "auto-passive"))


def abort_retr(ftp, remote, want, wait):
    """RETR, read `want` bytes, then ABOR with the data connection open and unread."""
    ftp.voidcmd("TYPE I")
    conn, size = ftp.ntransfercmd("RETR " + remote)
    got = 0
    with conn:
        while got < want:
            block = conn.recv(min(65536, want - got))
            if not block:
                break
            got += len(block)
        print(f"abort read {got} bytes of {remote} ({size} bytes)", flush=True)
        ftp.sock.settimeout(wait)
        t0 = time.monotonic()
        replies = []
        try:
            ftp.sock.sendall(b"\xff\xf4\xff", socket.MSG_OOB)  # IAC IP, IAC (urgent)
            ftp.sock.sendall(b"\xf2ABOR\r\n")                   # DM, ABOR
            replies.append(ftp.getmultiline())
            # The transfer's reply came first (426, or 226 had it ended); the
            # ABOR's (225/226) follows.
            if replies[0][:3] in ("426", "226", "451"):
                replies.append(ftp.getmultiline())
        except (socket.timeout, TimeoutError):
            ms = int((time.monotonic() - t0) * 1000)
            print(f"abort failed: replies {' | '.join(replies) or 'none'}, then nothing "
                  f"(timed out after {ms} ms)", flush=True)
            raise
        ms = int((time.monotonic() - t0) * 1000)
        codes = " ".join(r[:3] for r in replies)
        print(f"abort codes: {codes} in {ms} ms", flush=True)
        for r in replies:
            print(f"abort reply: {r.splitlines()[0]}", flush=True)
        # The data connection must end now: what the buffers held, then EOF.
        conn.settimeout(wait)
        more, end = 0, "eof"
        t0 = time.monotonic()
        try:
            while True:
                block = conn.recv(65536)
                if not block:
                    break
                more += len(block)
        except ConnectionResetError:
            end = "reset"
        except (socket.timeout, TimeoutError):
            end = "timeout"
        ms = int((time.monotonic() - t0) * 1000)
        print(f"abort data: {end} after {more} more bytes in {ms} ms, "
              f"{got + more} of {size} in all", flush=True)
    ftp.sock.settimeout(ftp.timeout)
    print(f"abort noop: {ftp.voidcmd('NOOP')}", flush=True)


def rounds(ftp, n, modes, list_dir, remote):
    """n data channels in a row, alternating modes and LIST/RETR."""
    ftp.voidcmd("TYPE I")
    for i in range(n):
        mode = modes[i % 2]
        set_mode(ftp, mode)
        if i % 4 in (0, 3):
            lines = []
            ftp.retrlines("LIST " + list_dir, lines.append)
            names = sorted(line.split()[-1] for line in lines
                           if line.strip() and not line.startswith("total "))
            names = [n for n in names if n not in (".", "..")]
            print(f"round {i} {mode.upper()} list: {' '.join(names)}", flush=True)
        else:
            h, size = hashlib.sha256(), 0

            def take(block):
                nonlocal size
                h.update(block)
                size += len(block)
            ftp.retrbinary("RETR " + remote, take)
            print(f"round {i} {mode.upper()} retr: {size} {h.hexdigest()}", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--user", default="anonymous")
    p.add_argument("--password", default="e2e@example.test")
    p.add_argument("--mode", required=True,
                   choices=["pasv", "epsv", "port", "eprt", "auto-passive", "auto-active"])
    p.add_argument("--list")
    p.add_argument("--get", nargs=2, metavar=("REMOTE", "LOCAL"))
    p.add_argument("--put", nargs=2, metavar=("LOCAL", "REMOTE"))
    p.add_argument("--foreign")
    p.add_argument("--hold")
    p.add_argument("--refuse", action="append", default=[])
    p.add_argument("--abort")
    p.add_argument("--abort-read", type=int, default=256 * 1024)
    p.add_argument("--abort-wait", type=float, default=5)
    p.add_argument("--rounds", type=int, default=0)
    p.add_argument("--round-modes")
    p.add_argument("--round-list", default="/")
    p.add_argument("--round-get")
    p.add_argument("--resume", nargs=2, metavar=("REMOTE", "LOCAL"))
    p.add_argument("--timeout", type=float, default=15)
    a = p.parse_args()

    ftp = Client(timeout=a.timeout)
    ftp.connect(a.host, 21)
    ftp.login(a.user, a.password)
    set_mode(ftp, a.mode)
    print(f"logged in to {a.host} over IPv{6 if ftp.af == socket.AF_INET6 else 4}",
          flush=True)

    for cmd in a.refuse:
        try:
            resp = ftp.sendcmd(cmd)
        except ftplib.Error as e:
            print(f"refused {cmd}: {e}", flush=True)
        else:
            print(f"accepted {cmd}: {resp}", flush=True)
            sys.exit(1)

    if a.list:
        names = sorted(n.rsplit("/", 1)[-1] for n in ftp.nlst(a.list))
        print("list " + a.list + ": " + " ".join(n for n in names if n not in (".", "..")),
              flush=True)
    if a.abort:
        abort_retr(ftp, a.abort, a.abort_read, a.abort_wait)
    if a.rounds:
        if a.round_modes:
            modes = a.round_modes.split(",")
        else:
            modes = ["epsv", "eprt"] if ftp.af == socket.AF_INET6 else ["pasv", "port"]
        rounds(ftp, a.rounds, modes, a.round_list, a.round_get)
        set_mode(ftp, a.mode)
    if a.resume:
        remote, local = a.resume
        start = os.path.getsize(local)
        ftp.voidcmd("TYPE I")
        with open(local, "ab") as out:
            ftp.retrbinary("RETR " + remote, out.write, rest=start)
        print(f"resume {remote} from {start}: {os.path.getsize(local)} bytes", flush=True)
    if a.get:
        remote, local = a.get
        if a.foreign:
            get_foreign(ftp, remote, local, a.foreign)
        elif a.hold:
            get_held(ftp, remote, local, a.hold)
        else:
            with open(local, "wb") as out:
                ftp.retrbinary("RETR " + remote, out.write)
        print(f"get {remote}: {os.path.getsize(local)} bytes", flush=True)
    if a.put:
        local, remote = a.put
        with open(local, "rb") as f:
            ftp.storbinary("STOR " + remote, f)
        print(f"put {remote}: {os.path.getsize(local)} bytes", flush=True)
    ftp.quit()


if __name__ == "__main__":
    main()
