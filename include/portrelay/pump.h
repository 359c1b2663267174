/*
 * pump.h - how bytes move from one socket to another: one direction of a TCP
 * session. The session state machine only asks a pump to make progress and
 * learns what it is waiting for; it does not care how the bytes travel.
 *
 * The buffered pump reads into a fixed buffer and writes it out; a zero-copy
 * pump (splice through a pipe) can stand behind the same calls.
 */
#ifndef PORTRELAY_PUMP_H
#define PORTRELAY_PUMP_H

#include <stddef.h>
#include <stdint.h>

/*
 * Bytes held in userspace per direction at most. A session holds two pumps,
 * so at most 2 * PUMP_BUFFER_SIZE bytes per connection, and only while data
 * is in flight: the buffer is allocated when a read needs it and freed when
 * it drains.
 */
#define PUMP_BUFFER_SIZE (64 * 1024)

enum pump_status {
	PUMP_WANT_READ,    /* buffer empty, source has nothing more now */
	PUMP_WANT_WRITE,   /* bytes pending, destination is full */
	PUMP_DONE,         /* source sent EOF and every byte was delivered */
	PUMP_ERROR,        /* a socket error; errno-like code in pump->error */
};

struct pump {
	char *buffer;      /* NULL while nothing is in flight */
	uint32_t start;    /* first byte not yet written */
	uint32_t end;      /* one past the last byte read */
	int error;         /* set with PUMP_ERROR */
	unsigned char error_at_dest;  /* the error came from the destination socket */
	unsigned char source_eof;
	uint64_t bytes;    /* delivered to the destination */
};

void pump_init(struct pump *pump);

/*
 * Moves bytes from source_fd to dest_fd until one side would block, the
 * source ends, or a fair share of work is done (then it reports
 * PUMP_WANT_READ with data still readable: level-triggered polling calls it
 * again on the next turn, so one busy connection cannot starve others).
 */
enum pump_status pump_run(struct pump *pump, int source_fd, int dest_fd);

/* Bytes read but not yet written. */
size_t pump_pending(const struct pump *pump);

void pump_release(struct pump *pump);

#endif
