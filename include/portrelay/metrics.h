/*
 * metrics.h - the counters as text: the Prometheus text exposition format
 * (GET /metrics) and JSON (GET /status). Pure: counters and the forward
 * table in, text out on a FILE (open_memstream for a buffer); no sockets,
 * no clock, no locks, so that every rule of the formats is unit-tested.
 *
 * Naming (https://prometheus.io/docs/practices/naming/): every name starts
 * with portrelay_, counters end in _total, units are base units (bytes,
 * seconds), one label `forward` carries the forward's name; kinds of one
 * thing are a label (reason, direction, result), never separate names.
 * No label ever carries a client address: their number is unbounded.
 */
#ifndef PORTRELAY_METRICS_H
#define PORTRELAY_METRICS_H

#include <stdint.h>
#include <stdio.h>

#include "portrelay/config.h"
#include "portrelay/relay.h"

/* One forward as read at one moment: its rule and its counters, all workers added up. */
struct metrics_forward {
	const struct forward *forward;
	struct relay_counters counters;
	uint64_t udp_flows_active;
};

/* The process as read at one moment. */
struct metrics_process {
	const char *version;
	double start_time;            /* seconds since the Unix epoch */
	long open_fds;                /* -1: unknown (then not exposed) */
	uint64_t reloads_succeeded;
	uint64_t reloads_failed;
	struct relay_counters counters;   /* the process's block (fd exhaustion) */
};

/*
 * Writes the Prometheus text exposition format (version 0.0.4): HELP and
 * TYPE once per name, all samples of a name together, label values escaped.
 * Enabled forwards only; TCP, UDP and FTP families for the forwards that
 * have them.
 */
void metrics_write_prometheus(FILE *out, const struct metrics_process *process,
			      const struct metrics_forward *forwards, size_t count);

/*
 * Writes the same as one JSON object: the process's values and, per
 * forward (enabled or not), its rule, its listeners and its counters
 * (names without the portrelay_ prefix; a labelled family is an object
 * keyed by the label's value).
 */
void metrics_write_json(FILE *out, const struct metrics_process *process,
			const struct metrics_forward *forwards, size_t count);

/* A Prometheus label value, escaped (\\, \", \n). */
void metrics_write_label_value(FILE *out, const char *value);

/* A JSON string with its quotes, escaped (", \, control characters). */
void metrics_write_json_string(FILE *out, const char *value);

#endif
