/*
 * notify.c - the sd_notify datagram protocol, without libsystemd.
 *
 * The protocol is one AF_UNIX SOCK_DGRAM datagram per notification, sent to
 * the address in $NOTIFY_SOCKET: a path, or an abstract name written with a
 * leading '@' (systemd's own convention; the '@' becomes the NUL byte that
 * starts an abstract address). Nothing is ever read back.
 */
#include "portrelay/notify.h"

#include <errno.h>
#include <event2/event.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "portrelay/log.h"

struct notify {
	int fd;                        /* -1: no $NOTIFY_SOCKET, nothing is sent */
	struct sockaddr_un addr;
	socklen_t addr_len;
	bool warned;                   /* a failed send was logged already */
	uint64_t watchdog_usec;        /* 0: no watchdog */
	struct event_base *base;
	struct event *watchdog_timer;
};

/* Fills addr from $NOTIFY_SOCKET's text; -1 if it is no usable address. */
static int notify_parse_address(struct notify *notify, const char *text)
{
	size_t len = strlen(text);
	if (len < 2 || (text[0] != '/' && text[0] != '@') || len >= sizeof notify->addr.sun_path)
		return -1;
	memset(&notify->addr, 0, sizeof notify->addr);
	notify->addr.sun_family = AF_UNIX;
	memcpy(notify->addr.sun_path, text, len);
	if (text[0] == '@') {
		/* Abstract: the length, not a terminating NUL, says where the name ends. */
		notify->addr.sun_path[0] = '\0';
		notify->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
	} else {
		notify->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
	}
	return 0;
}

/* $WATCHDOG_USEC, if it is meant for this process ($WATCHDOG_PID, when set). */
static uint64_t notify_read_watchdog(void)
{
	const char *usec = getenv("WATCHDOG_USEC");
	if (usec == NULL || *usec == '\0')
		return 0;
	const char *pid = getenv("WATCHDOG_PID");
	if (pid != NULL && *pid != '\0') {
		char *end;
		errno = 0;
		unsigned long long value = strtoull(pid, &end, 10);
		if (errno != 0 || *end != '\0' || value != (unsigned long long)getpid())
			return 0;
	}
	char *end;
	errno = 0;
	unsigned long long value = strtoull(usec, &end, 10);
	if (errno != 0 || *end != '\0' || value == 0)
		return 0;
	return value;
}

struct notify *notify_open(struct event_base *base)
{
	struct notify *notify = calloc(1, sizeof *notify);
	if (notify == NULL)
		return NULL;
	notify->fd = -1;
	notify->base = base;
	const char *socket_text = getenv("NOTIFY_SOCKET");
	if (socket_text == NULL || *socket_text == '\0')
		return notify;
	if (notify_parse_address(notify, socket_text) < 0) {
		log_warn(NULL, "NOTIFY_SOCKET \"%s\" is not an absolute path or @name; not "
			 "notifying the service manager", socket_text);
		return notify;
	}
	notify->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (notify->fd < 0) {
		log_warn(NULL, "cannot open a socket to notify the service manager: %s",
			 strerror(errno));
		return notify;
	}
	notify->watchdog_usec = notify_read_watchdog();
	return notify;
}

bool notify_enabled(const struct notify *notify)
{
	return notify != NULL && notify->fd >= 0;
}

uint64_t notify_watchdog_usec(const struct notify *notify)
{
	return notify_enabled(notify) ? notify->watchdog_usec : 0;
}

/* One datagram; a failure is logged once (the manager may be gone) and ignored. */
static void notify_send(struct notify *notify, const char *message)
{
	if (!notify_enabled(notify))
		return;
	ssize_t sent = sendto(notify->fd, message, strlen(message), MSG_NOSIGNAL,
			      (const struct sockaddr *)&notify->addr, notify->addr_len);
	if (sent >= 0) {
		notify->warned = false;
		return;
	}
	if (!notify->warned)
		log_warn(NULL, "cannot notify the service manager: %s", strerror(errno));
	notify->warned = true;
}

/* Sends "head" followed by STATUS=status when status is given. */
static void notify_send_status(struct notify *notify, const char *head, const char *status)
{
	char message[1024];
	if (status != NULL)
		snprintf(message, sizeof message, "%s%sSTATUS=%s", head, *head ? "\n" : "",
			 status);
	else
		snprintf(message, sizeof message, "%s", head);
	notify_send(notify, message);
}

static void notify_on_watchdog(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what;
	notify_send(arg, "WATCHDOG=1");
}

/* WATCHDOG=1 at half the interval, as sd_watchdog_enabled(3) advises. */
static void notify_start_watchdog(struct notify *notify)
{
	if (notify->watchdog_usec == 0 || notify->watchdog_timer != NULL)
		return;
	notify->watchdog_timer = event_new(notify->base, -1, EV_PERSIST, notify_on_watchdog,
					   notify);
	uint64_t half = notify->watchdog_usec / 2;
	struct timeval period = { .tv_sec = (time_t)(half / 1000000),
				  .tv_usec = (suseconds_t)(half % 1000000) };
	if (notify->watchdog_timer == NULL || event_add(notify->watchdog_timer, &period) < 0) {
		log_warn(NULL, "cannot start the watchdog keep-alive timer");
		return;
	}
	log_info(NULL, "systemd watchdog: WATCHDOG=1 every %.3f s", (double)half / 1e6);
}

void notify_ready(struct notify *notify, const char *status)
{
	if (!notify_enabled(notify))
		return;
	notify_send_status(notify, "READY=1", status);
	notify_start_watchdog(notify);
}

void notify_status(struct notify *notify, const char *status)
{
	notify_send_status(notify, "", status);
}

void notify_reloading(struct notify *notify, const char *status)
{
	if (!notify_enabled(notify))
		return;
	/* systemd >= 253 matches the reload to the signal by this timestamp. */
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	char head[96];
	snprintf(head, sizeof head, "RELOADING=1\nMONOTONIC_USEC=%llu",
		 (unsigned long long)now.tv_sec * 1000000ULL +
			 (unsigned long long)now.tv_nsec / 1000ULL);
	notify_send_status(notify, head, status);
}

void notify_stopping(struct notify *notify, const char *status)
{
	notify_send_status(notify, "STOPPING=1", status);
}

void notify_close(struct notify *notify)
{
	if (notify == NULL)
		return;
	if (notify->watchdog_timer != NULL)
		event_free(notify->watchdog_timer);
	if (notify->fd >= 0)
		close(notify->fd);
	free(notify);
}
