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

Exit status 0 if every step worked; the error otherwise.
"""
import argparse
import ftplib
import os
import socket
import sys
import time

DATA_COMMANDS = ("PASV", "EPSV", "PORT", "EPRT")


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
        if self.last_cmd in DATA_COMMANDS:
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
    p.add_argument("--timeout", type=float, default=15)
    a = p.parse_args()

    ftp = Client(timeout=a.timeout)
    ftp.mode = a.mode
    ftp.connect(a.host, 21)
    ftp.login(a.user, a.password)
    ftp.set_pasv(a.mode in ("pasv", "epsv", "auto-passive"))
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
