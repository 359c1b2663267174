/*
 * notify.h - the systemd notification protocol (sd_notify(3)), by hand.
 *
 * When the service manager sets $NOTIFY_SOCKET, it listens there for
 * newline-separated KEY=VALUE datagrams: READY=1 once the service serves,
 * RELOADING=1 (with MONOTONIC_USEC=) while it reloads, STOPPING=1 when it
 * shuts down, STATUS= for `systemctl status`, WATCHDOG=1 as a keep-alive
 * when WatchdogSec= is set ($WATCHDOG_USEC). Without $NOTIFY_SOCKET every
 * call is a no-op; a failed send is logged once and never stops the relay.
 */
#ifndef PORTRELAY_NOTIFY_H
#define PORTRELAY_NOTIFY_H

#include <stdbool.h>
#include <stdint.h>

struct event_base;
struct notify;

/*
 * Reads $NOTIFY_SOCKET ("/path" or "@abstract"), $WATCHDOG_USEC and
 * $WATCHDOG_PID, and opens the datagram socket. The environment is left
 * as it is (a reload notifies again). NULL when out of memory only: with no
 * socket the object is there and silent.
 */
struct notify *notify_open(struct event_base *base);

/* Whether $NOTIFY_SOCKET named a usable socket address. */
bool notify_enabled(const struct notify *notify);

/*
 * Sends READY=1 and STATUS=status, and starts the watchdog keep-alive
 * (WATCHDOG=1 every half of $WATCHDOG_USEC) on base.
 */
void notify_ready(struct notify *notify, const char *status);

/* STATUS=status alone. */
void notify_status(struct notify *notify, const char *status);

/* RELOADING=1 with MONOTONIC_USEC=<CLOCK_MONOTONIC now> and STATUS=status. */
void notify_reloading(struct notify *notify, const char *status);

/* STOPPING=1 with STATUS=status; the watchdog keeps running until notify_close. */
void notify_stopping(struct notify *notify, const char *status);

/* The watchdog interval in microseconds ($WATCHDOG_USEC for this process), 0 if none. */
uint64_t notify_watchdog_usec(const struct notify *notify);

void notify_close(struct notify *notify);

#endif
