/*
 * pump.h - how bytes move from one socket to another: one direction of a TCP
 * session. The session state machine only asks a pump to make progress and
 * learns what it is waiting for; it does not care how the bytes travel.
 *
 * Each burst of data starts out copied: recv into the worker's scratch
 * buffer and send straight on, which for the small messages of most
 * protocols is two system calls and no allocation. A burst that fills a
 * whole read is bulk: from then on it travels zero-copy, splice(2) socket ->
 * pipe -> socket, with a pipe from the worker's bounded pool, held only while
 * the burst lasts. Only bytes the destination could not take yet are kept
 * per connection (in a buffer, or in the pipe).
 */
#ifndef PORTRELAY_PUMP_H
#define PORTRELAY_PUMP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Bytes held per direction at most: copied bytes the destination could not
 * take (userspace, allocated only then), or the contents of a pipe (kernel).
 * A session holds two pumps: at most 128 KiB per connection, none when idle.
 */
#define PUMP_BUFFER_SIZE (64 * 1024)
#define PUMP_PIPE_SIZE (64 * 1024)

enum pump_status {
	PUMP_WANT_READ,    /* nothing in flight, source has nothing more now */
	PUMP_WANT_WRITE,   /* bytes pending, destination is full */
	PUMP_DONE,         /* source sent EOF and every byte was delivered */
	PUMP_ERROR,        /* a socket error; errno-like code in pump->error */
};

/* What the pumps of one worker share: a scratch buffer and the idle pipes. */
struct pump_pool {
	char *scratch;             /* PUMP_BUFFER_SIZE bytes */
	int (*idle)[2];
	unsigned idle_count;
	unsigned idle_max;
	unsigned in_use;
	unsigned max_in_use;       /* 0: splicing is off */
	bool splice_unsupported;   /* the kernel said EINVAL once: stop trying */
	uint64_t fallbacks;        /* bulk reads copied for want of a pipe */
};

/* max_pipes pipes in use at once (two descriptors each); 0 = no splicing. -1 on ENOMEM. */
int pump_pool_init(struct pump_pool *pool, unsigned max_pipes);
void pump_pool_destroy(struct pump_pool *pool);
/* Closes the idle pipes (when the last session has gone: nothing to reuse them). */
void pump_pool_trim(struct pump_pool *pool);

struct pump {
	struct pump_pool *pool;
	char *buffer;             /* bytes the destination has not taken; NULL if none */
	uint32_t start;           /* first buffered byte not yet written */
	uint32_t end;             /* one past the last buffered byte */
	int pipe[2];              /* -1 while no pipe is held */
	uint32_t pipe_bytes;      /* bytes in the pipe */
	int error;                /* set with PUMP_ERROR */
	unsigned char error_at_dest;  /* the error came from the destination socket */
	unsigned char source_eof;
	unsigned char bulk;       /* this burst filled a whole read: splice it */
	uint64_t bytes;           /* delivered to the destination */
};

void pump_init(struct pump *pump, struct pump_pool *pool);

/*
 * Moves bytes from source_fd to dest_fd until one side would block, the
 * source ends, or a fair share of work is done (then it reports
 * PUMP_WANT_READ with data still readable: level-triggered polling calls it
 * again on the next turn, so one busy connection cannot starve others).
 */
enum pump_status pump_run(struct pump *pump, int source_fd, int dest_fd);

/*
 * Bytes to deliver before anything read from the source (a PROXY header):
 * the next pump_run writes them first. On a fresh pump only; -1 otherwise
 * or when out of memory.
 */
int pump_preload(struct pump *pump, const void *data, size_t len);

/* Bytes read but not yet written. */
size_t pump_pending(const struct pump *pump);

/* Gives back the buffer and the pipe. */
void pump_release(struct pump *pump);

#endif
