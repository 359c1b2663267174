/*
 * pump.h - how bytes move from one socket to another: one direction of a TCP
 * session. The session state machine only asks a pump to make progress and
 * learns what it is waiting for; it does not care how the bytes travel.
 *
 * Two ways, behind the same calls:
 * - zero-copy: splice(2) socket -> pipe -> socket, the bytes never enter
 *   userspace. Pipes come from a bounded per-context pool and are held only
 *   while bytes are in flight.
 * - buffered: recv into a buffer, send it out. Used when splicing is off,
 *   when the pool is exhausted, or when the kernel refuses to splice.
 */
#ifndef PORTRELAY_PUMP_H
#define PORTRELAY_PUMP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Bytes held in userspace per direction at most. A session holds two pumps,
 * so at most 2 * PUMP_BUFFER_SIZE bytes per connection, and only while data
 * is in flight: the buffer is allocated when a read needs it and freed when
 * it drains. A pipe holds at most PUMP_PIPE_SIZE bytes (kernel memory).
 */
#define PUMP_BUFFER_SIZE (64 * 1024)
#define PUMP_PIPE_SIZE (64 * 1024)

enum pump_status {
	PUMP_WANT_READ,    /* nothing in flight, source has nothing more now */
	PUMP_WANT_WRITE,   /* bytes pending, destination is full */
	PUMP_DONE,         /* source sent EOF and every byte was delivered */
	PUMP_ERROR,        /* a socket error; errno-like code in pump->error */
};

/* Idle pipes kept for reuse, and a bound on pipes in use. */
struct pipe_pool {
	int (*idle)[2];
	unsigned idle_count;
	unsigned idle_max;
	unsigned in_use;
	unsigned max_in_use;
	bool splice_unsupported;   /* the kernel said EINVAL once: stop trying */
	uint64_t fallbacks;        /* reads done buffered for want of a pipe */
};

/* max_in_use pipes at once (two descriptors each). */
void pipe_pool_init(struct pipe_pool *pool, unsigned max_in_use);
void pipe_pool_destroy(struct pipe_pool *pool);
/* Closes the idle pipes (when the last session has gone: nothing to reuse them). */
void pipe_pool_trim(struct pipe_pool *pool);

struct pump {
	struct pipe_pool *pool;   /* NULL: buffered only */
	char *buffer;             /* NULL while nothing is buffered */
	uint32_t start;           /* first buffered byte not yet written */
	uint32_t end;             /* one past the last buffered byte */
	int pipe[2];              /* -1 while no pipe is held */
	uint32_t pipe_bytes;      /* bytes in the pipe */
	int error;                /* set with PUMP_ERROR */
	unsigned char error_at_dest;  /* the error came from the destination socket */
	unsigned char source_eof;
	uint64_t bytes;           /* delivered to the destination */
};

/* pool NULL: always buffered. */
void pump_init(struct pump *pump, struct pipe_pool *pool);

/*
 * Moves bytes from source_fd to dest_fd until one side would block, the
 * source ends, or a fair share of work is done (then it reports
 * PUMP_WANT_READ with data still readable: level-triggered polling calls it
 * again on the next turn, so one busy connection cannot starve others).
 */
enum pump_status pump_run(struct pump *pump, int source_fd, int dest_fd);

/* Bytes read but not yet written. */
size_t pump_pending(const struct pump *pump);

/* Gives back the buffer and the pipe. */
void pump_release(struct pump *pump);

#endif
