/*
 * log.h - one line per event on stderr, with a timestamp, a level and the
 * name of the forward the event belongs to.
 *
 * The level is process-wide: it is set once at start-up, before any worker
 * runs, and only read afterwards.
 */
#ifndef PORTRELAY_LOG_H
#define PORTRELAY_LOG_H

#include <stdbool.h>

enum log_level {
	LOG_LEVEL_ERROR = 0,
	LOG_LEVEL_WARN,
	LOG_LEVEL_INFO,
	LOG_LEVEL_DEBUG,
};

/* "error", "warn", "info" or "debug" -> level; returns -1 for anything else. */
int log_level_parse(const char *name, enum log_level *level_out);
const char *log_level_name(enum log_level level);

void log_set_level(enum log_level level);
bool log_enabled(enum log_level level);

/*
 * Writes "2026-11-24T22:50:21.123Z info  [forward] message\n" to stderr.
 * forward_name may be NULL for process-wide events.
 */
void log_msg(enum log_level level, const char *forward_name, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define log_error(fwd, ...) log_msg(LOG_LEVEL_ERROR, (fwd), __VA_ARGS__)
#define log_warn(fwd, ...) log_msg(LOG_LEVEL_WARN, (fwd), __VA_ARGS__)
#define log_info(fwd, ...) log_msg(LOG_LEVEL_INFO, (fwd), __VA_ARGS__)
#define log_debug(fwd, ...)                                   \
	do {                                                  \
		if (log_enabled(LOG_LEVEL_DEBUG))             \
			log_msg(LOG_LEVEL_DEBUG, (fwd), __VA_ARGS__); \
	} while (0)

#endif
