/*
 * metrics.c - counters -> Prometheus text format and JSON (see metrics.h).
 *
 * One table (metric_table) says how each field of struct relay_counters is
 * exposed: name, type, help, and an optional label. Rows of one name are
 * consecutive; both formats walk the table, so a counter added there shows
 * up in /metrics and /status alike.
 */
#include "portrelay/metrics.h"

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#define METRIC_PREFIX "portrelay_"
/* Not a field of struct relay_counters: the UDP flows open now. */
#define METRIC_FLOWS_ACTIVE ((size_t)-1)
/* Rows for forwards with the FTP helper only. */
#define METRIC_FTP 4u

struct metric_row {
	const char *name;     /* without METRIC_PREFIX */
	const char *type;     /* "counter" or "gauge" */
	const char *help;
	const char *label;    /* a second label besides forward, or NULL */
	const char *value;    /* its value */
	size_t offset;        /* of the field in struct relay_counters */
	unsigned kind;        /* FORWARD_TCP, FORWARD_UDP or METRIC_FTP */
};

#define FIELD(f) offsetof(struct relay_counters, f)

static const struct metric_row metric_table[] = {
	{ "tcp_connections_total", "counter", "TCP connections accepted.", NULL, NULL,
	  FIELD(tcp_accepted), FORWARD_TCP },
	{ "tcp_connections_active", "gauge",
	  "TCP connections being relayed now (FTP data connections included).", NULL, NULL,
	  FIELD(tcp_active), FORWARD_TCP },
	{ "tcp_connect_failures_total", "counter",
	  "Connections to the internal host that failed, by reason.", "reason", "refused",
	  FIELD(tcp_connect_refused), FORWARD_TCP },
	{ "tcp_connect_failures_total", NULL, NULL, "reason", "timeout",
	  FIELD(tcp_connect_timeout), FORWARD_TCP },
	{ "tcp_connect_failures_total", NULL, NULL, "reason", "other",
	  FIELD(tcp_connect_other), FORWARD_TCP },
	{ "tcp_resets_total", "counter",
	  "TCP connections ended by a reset or socket error from either side.", NULL, NULL,
	  FIELD(tcp_reset), FORWARD_TCP },
	{ "tcp_idle_timeouts_total", "counter",
	  "TCP connections closed after tcp.idle_timeout without traffic.", NULL, NULL,
	  FIELD(tcp_idle_closed), FORWARD_TCP },
	{ "tcp_drain_closed_total", "counter",
	  "TCP connections of a removed or changed forward closed at drain_timeout.", NULL, NULL,
	  FIELD(tcp_drain_closed), FORWARD_TCP },
	{ "tcp_refused_total", "counter",
	  "TCP clients refused (reset) at accept, by reason.", "reason", "denied",
	  FIELD(tcp_denied), FORWARD_TCP },
	{ "tcp_refused_total", NULL, NULL, "reason", "source_limit",
	  FIELD(tcp_refused_source_limit), FORWARD_TCP },
	{ "tcp_refused_total", NULL, NULL, "reason", "forward_limit",
	  FIELD(tcp_refused_forward_limit), FORWARD_TCP },
	{ "tcp_bytes_total", "counter", "Bytes relayed over TCP, by direction.", "direction",
	  "to_internal", FIELD(bytes_to_internal), FORWARD_TCP },
	{ "tcp_bytes_total", NULL, NULL, "direction", "to_client", FIELD(bytes_to_client),
	  FORWARD_TCP },
	{ "udp_flows_active", "gauge", "UDP flows open now.", NULL, NULL, METRIC_FLOWS_ACTIVE,
	  FORWARD_UDP },
	{ "udp_flows_created_total", "counter", "UDP flows created.", NULL, NULL,
	  FIELD(udp_flows_created), FORWARD_UDP },
	{ "udp_flows_expired_total", "counter", "UDP flows closed after their idle timeout.",
	  NULL, NULL, FIELD(udp_flows_expired), FORWARD_UDP },
	{ "udp_flows_evicted_total", "counter",
	  "UDP flows not yet assured, closed to make room for a new client.", NULL, NULL,
	  FIELD(udp_flows_evicted), FORWARD_UDP },
	{ "udp_flows_drain_closed_total", "counter",
	  "UDP flows of a removed or changed forward closed at drain_timeout.", NULL, NULL,
	  FIELD(udp_drain_closed), FORWARD_UDP },
	{ "udp_datagrams_total", "counter", "UDP datagrams relayed, by direction.", "direction",
	  "to_internal", FIELD(udp_datagrams_to_internal), FORWARD_UDP },
	{ "udp_datagrams_total", NULL, NULL, "direction", "to_client",
	  FIELD(udp_datagrams_to_client), FORWARD_UDP },
	{ "udp_bytes_total", "counter", "Payload bytes of the UDP datagrams relayed, by direction.",
	  "direction", "to_internal", FIELD(udp_bytes_to_internal), FORWARD_UDP },
	{ "udp_bytes_total", NULL, NULL, "direction", "to_client",
	  FIELD(udp_bytes_to_client), FORWARD_UDP },
	{ "udp_dropped_datagrams_total", "counter", "UDP datagrams dropped, by reason.",
	  "reason", "table_full", FIELD(udp_dropped_table_full), FORWARD_UDP },
	{ "udp_dropped_datagrams_total", NULL, NULL, "reason", "no_flow_socket",
	  FIELD(udp_flow_failed), FORWARD_UDP },
	{ "udp_dropped_datagrams_total", NULL, NULL, "reason", "too_big",
	  FIELD(udp_dropped_truncated), FORWARD_UDP },
	{ "udp_dropped_datagrams_total", NULL, NULL, "reason", "send_failed",
	  FIELD(udp_dropped_send), FORWARD_UDP },
	{ "udp_dropped_datagrams_total", NULL, NULL, "reason", "forward_removed",
	  FIELD(udp_dropped_removed), FORWARD_UDP },
	{ "udp_dropped_datagrams_total", NULL, NULL, "reason", "denied",
	  FIELD(udp_denied), FORWARD_UDP },
	{ "udp_dropped_datagrams_total", NULL, NULL, "reason", "source_limit",
	  FIELD(udp_dropped_source_limit), FORWARD_UDP },
	{ "udp_dropped_datagrams_total", NULL, NULL, "reason", "flow_budget",
	  FIELD(udp_dropped_flow_budget), FORWARD_UDP },
	{ "udp_port_unreachable_total", "counter",
	  "ICMP port unreachable errors from the internal host.", NULL, NULL,
	  FIELD(udp_refused), FORWARD_UDP },
	{ "ftp_data_listeners_total", "counter",
	  "FTP data listeners opened for PASV, EPSV, PORT and EPRT.", NULL, NULL,
	  FIELD(ftp_data_opened), METRIC_FTP },
	{ "ftp_data_listeners_closed_total", "counter",
	  "FTP data listeners closed, by what happened to them.", "result", "connected",
	  FIELD(ftp_data_connected), METRIC_FTP },
	{ "ftp_data_listeners_closed_total", NULL, NULL, "result", "expired",
	  FIELD(ftp_data_expired), METRIC_FTP },
	{ "ftp_data_listeners_closed_total", NULL, NULL, "result", "unused",
	  FIELD(ftp_data_dropped), METRIC_FTP },
	{ "ftp_data_foreign_refused_total", "counter",
	  "Connections to FTP data listeners from a foreign address, refused.", NULL, NULL,
	  FIELD(ftp_data_refused), METRIC_FTP },
	{ "ftp_commands_refused_total", "counter",
	  "FTP commands answered by the relay and never passed on.", NULL, NULL,
	  FIELD(ftp_commands_refused), METRIC_FTP },
};

#define METRIC_ROWS (sizeof metric_table / sizeof metric_table[0])

static uint64_t metric_value(const struct metric_row *row, const struct metrics_forward *f)
{
	if (row->offset == METRIC_FLOWS_ACTIVE)
		return f->udp_flows_active;
	uint64_t value;
	memcpy(&value, (const char *)&f->counters + row->offset, sizeof value);
	return value;
}

static bool metric_applies(const struct metric_row *row, const struct forward *fwd)
{
	if (row->kind == METRIC_FTP)
		return fwd->ftp;
	return (fwd->proto & row->kind) != 0;
}

/* Rows [first, end) share first's name. */
static size_t metric_family_end(size_t first)
{
	size_t end = first + 1;
	while (end < METRIC_ROWS && strcmp(metric_table[end].name, metric_table[first].name) == 0)
		end++;
	return end;
}

void metrics_write_label_value(FILE *out, const char *value)
{
	for (const char *p = value; *p != '\0'; p++) {
		if (*p == '\\')
			fputs("\\\\", out);
		else if (*p == '"')
			fputs("\\\"", out);
		else if (*p == '\n')
			fputs("\\n", out);
		else
			fputc(*p, out);
	}
}

void metrics_write_json_string(FILE *out, const char *value)
{
	fputc('"', out);
	for (const unsigned char *p = (const unsigned char *)value; *p != '\0'; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(out, "\\%c", *p);
		else if (*p == '\n')
			fputs("\\n", out);
		else if (*p == '\t')
			fputs("\\t", out);
		else if (*p < 0x20 || *p == 0x7f)
			fprintf(out, "\\u%04x", *p);
		else
			fputc(*p, out);
	}
	fputc('"', out);
}

static void prom_header(FILE *out, const char *name, const char *type, const char *help)
{
	/* HELP text escapes only backslash and newline; ours has neither. */
	fprintf(out, "# HELP " METRIC_PREFIX "%s %s\n# TYPE " METRIC_PREFIX "%s %s\n", name, help,
		name, type);
}

void metrics_write_prometheus(FILE *out, const struct metrics_process *process,
			      const struct metrics_forward *forwards, size_t count)
{
	prom_header(out, "build_info", "gauge", "Always 1; the version is a label.");
	fputs(METRIC_PREFIX "build_info{version=\"", out);
	metrics_write_label_value(out, process->version);
	fputs("\"} 1\n", out);
	prom_header(out, "start_time_seconds", "gauge",
		    "When the process started, in seconds since the Unix epoch.");
	fprintf(out, METRIC_PREFIX "start_time_seconds %.3f\n", process->start_time);
	if (process->open_fds >= 0) {
		prom_header(out, "open_fds", "gauge", "Open file descriptors of the process.");
		fprintf(out, METRIC_PREFIX "open_fds %ld\n", process->open_fds);
	}
	prom_header(out, "reloads_total", "counter", "Configuration reloads, by result.");
	fprintf(out, METRIC_PREFIX "reloads_total{result=\"success\"} %llu\n",
		(unsigned long long)process->reloads_succeeded);
	fprintf(out, METRIC_PREFIX "reloads_total{result=\"failure\"} %llu\n",
		(unsigned long long)process->reloads_failed);
	prom_header(out, "fd_exhaustions_total", "counter",
		    "Episodes of running out of file descriptors (accepting paused).");
	fprintf(out, METRIC_PREFIX "fd_exhaustions_total %llu\n",
		(unsigned long long)process->counters.accept_fd_exhausted);
	prom_header(out, "max_connections_reached_total", "counter",
		    "Episodes with max_connections open (new clients waited in the backlog).");
	fprintf(out, METRIC_PREFIX "max_connections_reached_total %llu\n",
		(unsigned long long)process->counters.tcp_max_connections_reached);

	for (size_t first = 0; first < METRIC_ROWS;) {
		size_t end = metric_family_end(first);
		const struct metric_row *head = &metric_table[first];
		bool header = false;
		for (size_t f = 0; f < count; f++) {
			const struct forward *fwd = forwards[f].forward;
			if (!fwd->enabled || !metric_applies(head, fwd))
				continue;
			if (!header) {
				prom_header(out, head->name, head->type, head->help);
				header = true;
			}
			for (size_t r = first; r < end; r++) {
				const struct metric_row *row = &metric_table[r];
				fputs(METRIC_PREFIX, out);
				fputs(row->name, out);
				fputs("{forward=\"", out);
				metrics_write_label_value(out, fwd->name);
				fputc('"', out);
				if (row->label != NULL)
					fprintf(out, ",%s=\"%s\"", row->label, row->value);
				fprintf(out, "} %llu\n",
					(unsigned long long)metric_value(row, &forwards[f]));
			}
		}
		first = end;
	}
}

/* A port or a range as the configuration file writes it: 8080 or "30000-30009". */
static void json_ports(FILE *out, uint16_t first, uint16_t last)
{
	if (first == last)
		fprintf(out, "%u", first);
	else
		fprintf(out, "\"%u-%u\"", first, last);
}

static void json_rule(FILE *out, const struct forward *fwd)
{
	char text[1024];
	fputs("\"name\":", out);
	metrics_write_json_string(out, fwd->name);
	fputs(",\"rule\":", out);
	metrics_write_json_string(out, forward_describe(fwd, text, sizeof text));
	fprintf(out, ",\"protocol\":\"%s\",\"external_address\":", forward_proto_name(fwd->proto));
	metrics_write_json_string(out, net_addr_format_ip(&fwd->external_addr, text, sizeof text));
	fputs(",\"external_port\":", out);
	json_ports(out, fwd->external_port_first, fwd->external_port_last);
	fputs(",\"internal_ip\":", out);
	metrics_write_json_string(out, fwd->internal_host);
	fputs(",\"internal_port\":", out);
	json_ports(out, fwd->internal_port_first, fwd->internal_port_last);
	fprintf(out, ",\"enabled\":%s,\"ftp\":%s", fwd->enabled ? "true" : "false",
		fwd->ftp ? "true" : "false");
	/* Rules of the hand-written file or -L are read-only; admin.rules_file's are not. */
	fprintf(out, ",\"read_only\":%s", fwd->from_rules_file ? "false" : "true");
}

/* The sockets the forward listens on (in every worker): one entry per protocol. */
static void json_listeners(FILE *out, const struct forward *fwd)
{
	char ip[NET_ADDR_STRLEN];
	static const enum forward_proto protos[] = { FORWARD_TCP, FORWARD_UDP };
	bool first = true;
	fputs("\"listeners\":[", out);
	for (size_t i = 0; fwd->enabled && i < 2; i++) {
		if (!(fwd->proto & protos[i]))
			continue;
		fprintf(out, "%s{\"protocol\":\"%s\",\"address\":", first ? "" : ",",
			forward_proto_name(protos[i]));
		metrics_write_json_string(out, net_addr_format_ip(&fwd->external_addr, ip,
								  sizeof ip));
		fputs(",\"port\":", out);
		json_ports(out, fwd->external_port_first, fwd->external_port_last);
		fprintf(out, ",\"sockets\":%u}", forward_port_count(fwd));
		first = false;
	}
	fputc(']', out);
}

static void json_counters(FILE *out, const struct metrics_forward *f)
{
	bool first_family = true;
	fputs("\"counters\":{", out);
	for (size_t first = 0; first < METRIC_ROWS;) {
		size_t end = metric_family_end(first);
		const struct metric_row *head = &metric_table[first];
		if (metric_applies(head, f->forward)) {
			fprintf(out, "%s\"%s\":", first_family ? "" : ",", head->name);
			first_family = false;
			if (head->label == NULL) {
				fprintf(out, "%llu", (unsigned long long)metric_value(head, f));
			} else {
				fputc('{', out);
				for (size_t r = first; r < end; r++)
					fprintf(out, "%s\"%s\":%llu", r == first ? "" : ",",
						metric_table[r].value,
						(unsigned long long)metric_value(&metric_table[r], f));
				fputc('}', out);
			}
		}
		first = end;
	}
	fputc('}', out);
}

void metrics_write_json(FILE *out, const struct metrics_process *process,
			const struct metrics_forward *forwards, size_t count)
{
	fputs("{\"version\":", out);
	metrics_write_json_string(out, process->version);
	fprintf(out, ",\"start_time_seconds\":%.3f", process->start_time);
	if (process->open_fds >= 0)
		fprintf(out, ",\"open_fds\":%ld", process->open_fds);
	fprintf(out, ",\"reloads_total\":{\"success\":%llu,\"failure\":%llu}",
		(unsigned long long)process->reloads_succeeded,
		(unsigned long long)process->reloads_failed);
	fprintf(out, ",\"fd_exhaustions_total\":%llu,\"max_connections_reached_total\":%llu"
		",\"forwards\":[", (unsigned long long)process->counters.accept_fd_exhausted,
		(unsigned long long)process->counters.tcp_max_connections_reached);
	for (size_t f = 0; f < count; f++) {
		fputs(f == 0 ? "{" : ",{", out);
		json_rule(out, forwards[f].forward);
		fputc(',', out);
		json_listeners(out, forwards[f].forward);
		fputc(',', out);
		json_counters(out, &forwards[f]);
		fputc('}', out);
	}
	fputs("]}\n", out);
}
