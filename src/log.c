/*
 * log.c - levels, timestamps, one line per event on stderr.
 */
#include "portrelay/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static const char *const level_names[] = {
	[LOG_LEVEL_ERROR] = "error",
	[LOG_LEVEL_WARN] = "warn",
	[LOG_LEVEL_INFO] = "info",
	[LOG_LEVEL_DEBUG] = "debug",
};

/* Set once at start-up, before any worker thread exists; read-only after. */
static enum log_level current_level = LOG_LEVEL_INFO;

int log_level_parse(const char *name, enum log_level *level_out)
{
	for (size_t i = 0; i < sizeof level_names / sizeof level_names[0]; i++) {
		if (strcmp(name, level_names[i]) == 0) {
			*level_out = (enum log_level)i;
			return 0;
		}
	}
	return -1;
}

const char *log_level_name(enum log_level level)
{
	if ((unsigned)level < sizeof level_names / sizeof level_names[0])
		return level_names[level];
	return "?";
}

void log_set_level(enum log_level level)
{
	current_level = level;
}

bool log_enabled(enum log_level level)
{
	return level <= current_level;
}

void log_msg(enum log_level level, const char *forward_name, const char *fmt, ...)
{
	if (!log_enabled(level))
		return;

	struct timespec now;
	struct tm utc;
	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &utc);

	/*
	 * Format the whole line first and write it with one call, so that lines
	 * from several threads never interleave.
	 */
	char line[1024];
	int len = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s ",
			   utc.tm_year + 1900, utc.tm_mon + 1, utc.tm_mday, utc.tm_hour,
			   utc.tm_min, utc.tm_sec, now.tv_nsec / 1000000L, log_level_name(level));
	if (forward_name != NULL && len < (int)sizeof line)
		len += snprintf(line + len, sizeof line - (size_t)len, "[%s] ", forward_name);
	if (len < (int)sizeof line) {
		va_list args;
		va_start(args, fmt);
		len += vsnprintf(line + len, sizeof line - (size_t)len, fmt, args);
		va_end(args);
	}
	if (len >= (int)sizeof line - 1)
		len = (int)sizeof line - 2;
	line[len++] = '\n';
	fwrite(line, 1, (size_t)len, stderr);
}
