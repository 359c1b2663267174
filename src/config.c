/*
 * config.c - the forward table: its lifetime, the rules shared by the file
 * and -L parsers (port ranges, protocols, hosts), config_finish, and
 * describing forwards.
 *
 * Work happens in two steps. config_load_file (config_file.c) and
 * config_add_spec (config_spec.c) check all that the text alone can tell
 * and append forwards; config_finish then fills in wan_address, resolves
 * host names and rejects overlapping forwards, which needs the whole table.
 */
#include "portrelay/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_internal.h"

#define CONFIG_PORT_MIN 1
#define CONFIG_PORT_MAX 65535

/* ---- errors ---------------------------------------------------------- */

/*
 * An error is one line, whatever the file's strings hold: control
 * characters (a newline inside a quoted value) are written as \xNN.
 */
static void config_escape_controls(const char *text, char *out, size_t out_len)
{
	size_t n = 0;
	for (const unsigned char *p = (const unsigned char *)text; *p != '\0'; p++) {
		if (iscntrl(*p)) {
			if (n + 4 >= out_len)
				break;
			snprintf(out + n, out_len - n, "\\x%02x", *p);
			n += 4;
		} else {
			if (n + 1 >= out_len)
				break;
			out[n++] = (char)*p;
		}
	}
	out[n] = '\0';
}

int config_fail(char *err, size_t err_len, const char *where, const char *label,
		const char *fmt, ...)
{
	char reason[CONFIG_REASON_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(reason, sizeof reason, fmt, ap);
	va_end(ap);
	if (err != NULL && err_len > 0) {
		char line[CONFIG_ORIGIN_MAX + CONFIG_LABEL_MAX + CONFIG_REASON_MAX];
		snprintf(line, sizeof line, "%s: %s%s", where, label, reason);
		config_escape_controls(line, err, err_len);
	}
	return -1;
}

int config_reason(char *why, size_t why_len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, why_len, fmt, ap);
	va_end(ap);
	return -1;
}

void config_forward_label(const struct forward *fwd, char *label, size_t len)
{
	snprintf(label, len, "forward \"%s\": ", fwd->name);
}

/* ---- ports ----------------------------------------------------------- */

enum config_port_status {
	CONFIG_PORT_OK,
	CONFIG_PORT_SYNTAX,
	CONFIG_PORT_RANGE,
};

/* Number of ports in first..last; also what forward_port_count reports. */
static unsigned config_port_span(uint16_t first, uint16_t last)
{
	return (unsigned)last - first + 1;
}

const char *config_ports_format(uint16_t first, uint16_t last, char *buf, size_t len)
{
	if (first == last)
		snprintf(buf, len, "%u", first);
	else
		snprintf(buf, len, "%u-%u", first, last);
	return buf;
}

/*
 * Digits only: no sign, no spaces. The value saturates past 65535 while
 * scanning, so a long digit string cannot overflow.
 */
static enum config_port_status config_port_number(const char *text, size_t len, uint16_t *port)
{
	unsigned long value = 0;

	if (len == 0)
		return CONFIG_PORT_SYNTAX;
	for (size_t i = 0; i < len; i++) {
		if (text[i] < '0' || text[i] > '9')
			return CONFIG_PORT_SYNTAX;
		if (value <= CONFIG_PORT_MAX)
			value = value * 10 + (unsigned long)(text[i] - '0');
	}
	if (value < CONFIG_PORT_MIN || value > CONFIG_PORT_MAX)
		return CONFIG_PORT_RANGE;
	*port = (uint16_t)value;
	return CONFIG_PORT_OK;
}

/* One side of "N-M"; `whole` is the value as written, for the message. */
static int config_port_part(const char *part, size_t len, const char *subject,
			    const char *whole, uint16_t *port, char *why, size_t why_len)
{
	switch (config_port_number(part, len, port)) {
	case CONFIG_PORT_OK:
		return 0;
	case CONFIG_PORT_RANGE:
		return config_reason(why, why_len, "%s %.*s is outside 1-65535", subject,
				     (int)len, part);
	case CONFIG_PORT_SYNTAX:
		break;
	}
	return config_reason(why, why_len, "%s \"%s\" is not a port number or a range N-M",
			     subject, whole);
}

int config_ports_parse(const char *text, const char *subject, struct config_ports *out,
		       char *why, size_t why_len)
{
	const char *dash = strchr(text, '-');
	size_t first_len = dash != NULL ? (size_t)(dash - text) : strlen(text);
	const char *last = dash != NULL ? dash + 1 : text;
	size_t last_len = dash != NULL ? strlen(last) : first_len;

	if (config_port_part(text, first_len, subject, text, &out->first, why, why_len) < 0 ||
	    config_port_part(last, last_len, subject, text, &out->last, why, why_len) < 0)
		return -1;
	if (out->first > out->last)
		return config_reason(why, why_len, "%s range %s ends before it starts",
				     subject, text);
	return 0;
}

int config_ports_from_integer(long long value, const char *subject, struct config_ports *out,
			      char *why, size_t why_len)
{
	if (value < CONFIG_PORT_MIN || value > CONFIG_PORT_MAX)
		return config_reason(why, why_len, "%s %lld is outside 1-65535", subject, value);
	out->first = out->last = (uint16_t)value;
	return 0;
}

/* A range maps one to one onto the internal ports, so both must be equally wide. */
static int config_ports_check_width(const struct config_ports *external, const char *ext_subject,
				    const struct config_ports *internal, const char *int_subject,
				    char *why, size_t why_len)
{
	char ext_text[CONFIG_PORT_TEXT_MAX], int_text[CONFIG_PORT_TEXT_MAX];
	unsigned ext_width = config_port_span(external->first, external->last);
	unsigned int_width = config_port_span(internal->first, internal->last);

	if (ext_width == int_width)
		return 0;
	return config_reason(why, why_len, "%s %s%s is %u port%s wide but %s %s%s is %u",
			     int_subject, int_width > 1 ? "range " : "",
			     config_ports_format(internal->first, internal->last, int_text,
						 sizeof int_text),
			     int_width, int_width > 1 ? "s" : "",
			     ext_subject, ext_width > 1 ? "range " : "",
			     config_ports_format(external->first, external->last, ext_text,
						 sizeof ext_text),
			     ext_width);
}

int config_forward_set_ports(struct forward *fwd,
			     const struct config_ports *external, const char *ext_subject,
			     const struct config_ports *internal, const char *int_subject,
			     char *why, size_t why_len)
{
	if (config_ports_check_width(external, ext_subject, internal, int_subject, why,
				     why_len) < 0)
		return -1;
	fwd->external_port_first = external->first;
	fwd->external_port_last = external->last;
	fwd->internal_port_first = internal->first;
	fwd->internal_port_last = internal->last;
	return 0;
}

/* ---- protocols, hosts, names ----------------------------------------- */

int config_proto_parse(const char *text, enum forward_proto *proto)
{
	if (strcmp(text, "tcp") == 0)
		*proto = FORWARD_TCP;
	else if (strcmp(text, "udp") == 0)
		*proto = FORWARD_UDP;
	else if (strcmp(text, "both") == 0)
		*proto = FORWARD_BOTH;
	else
		return -1;
	return 0;
}

int config_copy_unbracketed(const char *text, char *out, size_t out_len)
{
	size_t len = strlen(text);

	if (len > 0 && text[0] == '[') {
		if (len < 2 || text[len - 1] != ']')
			return -1;
		text++;
		len -= 2;
	}
	if (len >= out_len)
		return -1;
	memcpy(out, text, len);
	out[len] = '\0';
	return 0;
}

/*
 * "fe80::1%eth0": an IPv6 address and a scope (an interface name or index),
 * as getaddrinfo and the file's internal_ip accept it. Only the form is
 * checked here; config_parse_address finds the interface.
 */
static bool config_scoped_ipv6(const char *text)
{
	const char *percent = strchr(text, '%');
	char ip[INET6_ADDRSTRLEN];
	struct in6_addr addr;
	size_t ip_len;

	if (percent == NULL || percent[1] == '\0' || strlen(percent + 1) >= IF_NAMESIZE)
		return false;
	ip_len = (size_t)(percent - text);
	if (ip_len >= sizeof ip)
		return false;
	for (const char *p = percent + 1; *p != '\0'; p++) {
		if (isspace((unsigned char)*p) || iscntrl((unsigned char)*p) || *p == '%' ||
		    *p == '/')
			return false;
	}
	memcpy(ip, text, ip_len);
	ip[ip_len] = '\0';
	return inet_pton(AF_INET6, ip, &addr) == 1;
}

bool config_numeric_address(const char *text, char *out, size_t out_len)
{
	struct net_addr addr;

	return config_copy_unbracketed(text, out, out_len) == 0 &&
	       (net_addr_parse_ip(out, 0, &addr) == 0 || config_scoped_ipv6(out));
}

int config_parse_address(const char *bare, struct net_addr *addr, char *why, size_t why_len)
{
	const char *percent = strchr(bare, '%');
	char ip[INET6_ADDRSTRLEN];
	unsigned scope;

	if (net_addr_parse_ip(bare, 0, addr) == 0)
		return 0;
	if (!config_scoped_ipv6(bare))
		return config_reason(why, why_len, "\"%s\" is not a numeric IPv4 or IPv6 address",
				     bare);
	memcpy(ip, bare, (size_t)(percent - bare));
	ip[percent - bare] = '\0';
	net_addr_parse_ip(ip, 0, addr);
	scope = if_nametoindex(percent + 1);
	if (scope == 0) {
		char *end = NULL;
		unsigned long index = strtoul(percent + 1, &end, 10);
		if (!isdigit((unsigned char)percent[1]) || *end != '\0' || index == 0 ||
		    index > UINT32_MAX)
			return config_reason(why, why_len, "\"%s\": no network interface \"%s\"",
					     bare, percent + 1);
		scope = (unsigned)index;
	}
	((struct sockaddr_in6 *)&addr->ss)->sin6_scope_id = scope;
	return 0;
}

const char *config_host_problem(const char *host)
{
	if (host[0] == '\0')
		return "is empty";
	if (strlen(host) >= CONFIG_HOST_MAX)
		return "is too long";
	for (const char *p = host; *p != '\0'; p++) {
		if (isspace((unsigned char)*p) || iscntrl((unsigned char)*p))
			return "contains whitespace or control characters";
	}
	return NULL;
}

void config_default_name(struct forward *fwd)
{
	char ports[CONFIG_PORT_TEXT_MAX];

	snprintf(fwd->name, sizeof fwd->name, "%s:%s",
		 fwd->ftp ? "ftp" : forward_proto_name(fwd->proto),
		 config_ports_format(fwd->external_port_first, fwd->external_port_last,
				     ports, sizeof ports));
}

/* ---- the table --------------------------------------------------------- */

void config_defaults(struct config *cfg)
{
	memset(cfg, 0, sizeof *cfg);
	snprintf(cfg->wan_address, sizeof cfg->wan_address, "0.0.0.0");
	cfg->log_level = LOG_LEVEL_INFO;
	cfg->tcp_connect_timeout = 10.0;
	cfg->tcp_idle_timeout = 0.0;
	cfg->udp_idle_timeout = 60.0;
	cfg->udp_unreplied_timeout = 30.0;
	cfg->udp_max_flows = 0;         /* automatic */
	cfg->max_connections = 0;       /* automatic */
	cfg->tcp_keepalive = 60;
	cfg->tcp_splice = true;
	cfg->workers = 0;
	cfg->busy_poll_us = 0;
	cfg->ftp_data_timeout = 30.0;
	cfg->shutdown_timeout = 5.0;
}

void config_free(struct config *cfg)
{
	free(cfg->forwards);
	config_defaults(cfg);
}

/*
 * The capacity follows from the count (8, 16, 32...), so struct config
 * needs no capacity field: the array is full exactly when the count is 0
 * or a power of two from 8 on.
 */
int config_append_forward(struct config *cfg, const struct forward *fwd)
{
	size_t count = cfg->forward_count;
	bool full = count < 8 ? count == 0 : (count & (count - 1)) == 0;

	if (full) {
		size_t capacity = count == 0 ? 8 : count * 2;
		if (capacity > SIZE_MAX / sizeof *fwd)
			return -1;
		struct forward *grown = realloc(cfg->forwards, capacity * sizeof *grown);
		if (grown == NULL)
			return -1;
		cfg->forwards = grown;
	}
	cfg->forwards[count] = *fwd;
	cfg->forward_count = count + 1;
	return 0;
}

void config_forward_defaults(struct forward *fwd)
{
	memset(fwd, 0, sizeof *fwd);
	fwd->enabled = true;
	fwd->max_connections_per_source = CONFIG_DEFAULT_MAX_CONNECTIONS_PER_SOURCE;
	fwd->max_flows_per_source = CONFIG_DEFAULT_MAX_FLOWS_PER_SOURCE;
}

/* ---- config_finish ----------------------------------------------------- */

int config_finish_forward(const struct config *cfg, struct forward *fwd, char *err,
			  size_t err_len, const char **field)
{
	const char *unused;
	char label[CONFIG_LABEL_MAX];
	char bare[CONFIG_HOST_MAX];
	char reason[CONFIG_REASON_MAX];

	if (field == NULL)
		field = &unused;
	*field = "external_address";
	config_forward_label(fwd, label, sizeof label);
	if (fwd->external_host[0] == '\0') {
		snprintf(fwd->external_host, sizeof fwd->external_host, "%s", cfg->wan_address);
		fwd->external_from_wan = true;
	}
	if (!config_numeric_address(fwd->external_host, bare, sizeof bare))
		return config_fail(err, err_len, fwd->origin, label,
				   "external address \"%s\" is not a numeric IPv4 or IPv6 address",
				   fwd->external_host);
	if (config_parse_address(bare, &fwd->external_addr, reason, sizeof reason) < 0)
		return config_fail(err, err_len, fwd->origin, label, "external address %s",
				   reason);
	if (fwd->udp_idle_timeout == 0)
		fwd->udp_idle_timeout = cfg->udp_idle_timeout;
	if (fwd->ftp && fwd->ftp_data_port_first == 0) {
		fwd->ftp_data_port_first = cfg->ftp_data_port_first;
		fwd->ftp_data_port_last = cfg->ftp_data_port_last;
	}

	/* A disabled rule opens nothing, so its host need not exist yet. */
	*field = "internal_ip";
	if (!fwd->enabled)
		return 0;
	if (net_addr_resolve(fwd->internal_host, 0, &fwd->internal_addr, reason,
			     sizeof reason) < 0)
		return config_fail(err, err_len, fwd->origin, label,
				   "internal_ip \"%s\" does not resolve: %s", fwd->internal_host,
				   reason);
	return 0;
}

/* "::" is bound dual-stack, so it takes the port on every IPv4 and IPv6 address. */
static bool config_is_dual_stack_any(const struct net_addr *addr)
{
	return net_addr_family(addr) == AF_INET6 && net_addr_is_wildcard(addr);
}

static bool config_addresses_collide(const struct net_addr *a, const struct net_addr *b)
{
	if (config_is_dual_stack_any(a) || config_is_dual_stack_any(b))
		return true;
	if (net_addr_same_ip(a, b))
		return true;
	/* 0.0.0.0 takes the port on every IPv4 address. */
	return net_addr_family(a) == AF_INET && net_addr_family(b) == AF_INET &&
	       (net_addr_is_wildcard(a) || net_addr_is_wildcard(b));
}

/* The caller has already seen that the port ranges intersect. */
static bool config_forwards_collide(const struct forward *a, const struct forward *b)
{
	return (a->proto & b->proto) != 0 &&
	       config_addresses_collide(&a->external_addr, &b->external_addr);
}

/* Reported on the forward that comes later in the table, naming the earlier one. */
static int config_overlap_fail(const struct forward *a, const struct forward *b, char *err,
			       size_t err_len)
{
	const struct forward *earlier = a < b ? a : b;
	const struct forward *later = a < b ? b : a;
	enum forward_proto shared = (enum forward_proto)(a->proto & b->proto);
	unsigned port = a->external_port_first > b->external_port_first ?
		a->external_port_first : b->external_port_first;
	char label[CONFIG_LABEL_MAX], later_ip[NET_ADDR_STRLEN], earlier_ip[NET_ADDR_STRLEN];
	char earlier_on[NET_ADDR_STRLEN + 8] = "";

	config_forward_label(later, label, sizeof label);
	net_addr_format_ip(&later->external_addr, later_ip, sizeof later_ip);
	net_addr_format_ip(&earlier->external_addr, earlier_ip, sizeof earlier_ip);
	if (!net_addr_same_ip(&later->external_addr, &earlier->external_addr))
		snprintf(earlier_on, sizeof earlier_on, " on %s", earlier_ip);
	return config_fail(err, err_len, later->origin, label,
			   "%s port %u on %s overlaps forward \"%s\"%s (%s)",
			   forward_proto_name(shared & FORWARD_TCP ? FORWARD_TCP : FORWARD_UDP),
			   port, later_ip, earlier->name, earlier_on, earlier->origin);
}

/* By first external port; ties in table order, so the same table reports the same way. */
static int config_overlap_compare(const void *left, const void *right)
{
	const struct forward *a = *(const struct forward *const *)left;
	const struct forward *b = *(const struct forward *const *)right;

	if (a->external_port_first != b->external_port_first)
		return a->external_port_first < b->external_port_first ? -1 : 1;
	return (a > b) - (a < b);
}

/*
 * Sweeps the enabled forwards in order of their first port, keeping the
 * "active" ones whose ranges still reach the current start: only those can
 * intersect it. With distinct ports the active set stays tiny, so the whole
 * check is O(n log n); only many forwards sharing ports on different
 * addresses make it grow.
 */
static int config_check_overlaps(const struct config *cfg, char *err, size_t err_len)
{
	size_t count = 0, active_count = 0;
	const struct forward **sorted = calloc(cfg->forward_count + 1, sizeof *sorted);
	const struct forward **active = calloc(cfg->forward_count + 1, sizeof *active);
	int rc = 0;

	if (sorted == NULL || active == NULL) {
		rc = config_fail(err, err_len, "config", "", "out of memory");
		goto out;
	}
	for (size_t i = 0; i < cfg->forward_count; i++) {
		if (cfg->forwards[i].enabled)
			sorted[count++] = &cfg->forwards[i];
	}
	qsort(sorted, count, sizeof *sorted, config_overlap_compare);
	for (size_t i = 0; i < count && rc == 0; i++) {
		const struct forward *current = sorted[i];
		size_t kept = 0;

		for (size_t j = 0; j < active_count && rc == 0; j++) {
			/* Ended before current starts, so before every later start too. */
			if (active[j]->external_port_last < current->external_port_first)
				continue;
			active[kept++] = active[j];
			if (config_forwards_collide(active[j], current))
				rc = config_overlap_fail(active[j], current, err, err_len);
		}
		active_count = kept;
		active[active_count++] = current;
	}
out:
	free(sorted);
	free(active);
	return rc;
}

/*
 * An FTP forward's data ports must not be another forward's listening
 * ports on the same address: its data listeners could never bind there,
 * and a client could not tell the two apart.
 */
static int config_check_ftp_data_ports(const struct config *cfg, char *err, size_t err_len)
{
	for (size_t i = 0; i < cfg->forward_count; i++) {
		const struct forward *ftp = &cfg->forwards[i];
		if (!ftp->enabled || !ftp->ftp || ftp->ftp_data_port_first == 0)
			continue;
		for (size_t j = 0; j < cfg->forward_count; j++) {
			const struct forward *other = &cfg->forwards[j];
			char label[CONFIG_LABEL_MAX], ports[CONFIG_PORT_TEXT_MAX];
			if (!other->enabled || !(other->proto & FORWARD_TCP) ||
			    other->external_port_last < ftp->ftp_data_port_first ||
			    other->external_port_first > ftp->ftp_data_port_last ||
			    !config_addresses_collide(&ftp->external_addr, &other->external_addr))
				continue;
			config_forward_label(ftp, label, sizeof label);
			return config_fail(err, err_len, ftp->origin, label,
					   "ftp data ports %s overlap the tcp ports of forward "
					   "\"%s\" (%s)",
					   config_ports_format(ftp->ftp_data_port_first,
							       ftp->ftp_data_port_last, ports,
							       sizeof ports),
					   other->name, other->origin);
		}
	}
	return 0;
}

/* ---- loops: a target that is one of the relay's own listeners ------------ */

static void config_describe_ip(const char *ip, char *buf, size_t len);

/*
 * The host's own addresses, from getifaddrs, read once and only when a
 * target could be a listener. count is -1 until read; a host whose
 * addresses cannot be read has none beyond loopback.
 */
struct config_local_addrs {
	struct net_addr *addrs;
	long count;
};

static void config_local_addrs_read(struct config_local_addrs *local)
{
	struct ifaddrs *list = NULL;
	size_t capacity = 0;

	local->count = 0;
	if (getifaddrs(&list) < 0)
		return;
	for (struct ifaddrs *ifa = list; ifa != NULL; ifa = ifa->ifa_next)
		capacity++;
	local->addrs = calloc(capacity + 1, sizeof *local->addrs);
	for (struct ifaddrs *ifa = list; ifa != NULL && local->addrs != NULL;
	     ifa = ifa->ifa_next) {
		if (ifa->ifa_addr == NULL)
			continue;
		if (ifa->ifa_addr->sa_family == AF_INET)
			net_addr_set(&local->addrs[local->count++], ifa->ifa_addr,
				     sizeof(struct sockaddr_in));
		else if (ifa->ifa_addr->sa_family == AF_INET6)
			net_addr_set(&local->addrs[local->count++], ifa->ifa_addr,
				     sizeof(struct sockaddr_in6));
	}
	freeifaddrs(list);
}

/*
 * The address a connection to ip reaches: a mapped address is IPv4, and
 * connecting to a wildcard address reaches the host itself (Linux takes
 * 0.0.0.0 as 127.0.0.1 and :: as ::1).
 */
static struct net_addr config_reached_address(const struct net_addr *ip)
{
	struct net_addr reached = *ip;

	net_addr_unmap(&reached);
	if (net_addr_is_wildcard(&reached))
		net_addr_parse_ip(net_addr_family(&reached) == AF_INET ? "127.0.0.1" : "::1", 0,
				  &reached);
	return reached;
}

/* Whether ip (as config_reached_address gives it) is an address of this host. */
static bool config_is_local(const struct net_addr *ip, struct config_local_addrs *local)
{
	if (net_addr_family(ip) == AF_INET) {
		const struct sockaddr_in *v4 = (const struct sockaddr_in *)&ip->ss;
		if ((ntohl(v4->sin_addr.s_addr) >> 24) == 127)
			return true;   /* all of 127.0.0.0/8 is the host's own */
	} else if (IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)&ip->ss)->sin6_addr)) {
		return true;
	}
	if (local->count < 0)
		config_local_addrs_read(local);
	for (long i = 0; i < local->count; i++) {
		if (net_addr_same_ip(&local->addrs[i], ip))
			return true;
	}
	return false;
}

/*
 * Whether a connection to target (reached address) arrives at a listener
 * bound to listen_ip: the same address, or a wildcard that takes every
 * local address of its family ("::", bound dual-stack, takes IPv4 too).
 */
static bool config_listener_takes(const struct net_addr *listen_ip,
				  const struct net_addr *target, struct config_local_addrs *local)
{
	struct net_addr bound = *listen_ip;

	net_addr_unmap(&bound);
	if (config_is_dual_stack_any(&bound))
		return config_is_local(target, local);
	if (net_addr_is_wildcard(&bound))
		return net_addr_family(target) == AF_INET && config_is_local(target, local);
	return net_addr_same_ip(&bound, target);
}

/* The enabled forwards by first external port, and the highest last port up to each. */
struct config_listeners {
	const struct forward **by_port;
	uint16_t *max_last;
	size_t count;
};

static int config_listener_compare(const void *left, const void *right)
{
	const struct forward *a = *(const struct forward *const *)left;
	const struct forward *b = *(const struct forward *const *)right;

	if (a->external_port_first != b->external_port_first)
		return a->external_port_first < b->external_port_first ? -1 : 1;
	return (a > b) - (a < b);
}

static int config_loop_fail(const struct forward *fwd, const struct forward *listener,
			    enum forward_proto proto, const struct net_addr *target, uint16_t port,
			    char *err, size_t err_len)
{
	char label[CONFIG_LABEL_MAX], ip[NET_ADDR_STRLEN], where[NET_ADDR_STRLEN + 8];
	char whose[CONFIG_NAME_MAX + CONFIG_ORIGIN_MAX + 32];

	config_forward_label(fwd, label, sizeof label);
	net_addr_format_ip(target, ip, sizeof ip);
	config_describe_ip(ip, where, sizeof where);
	if (listener == fwd)
		snprintf(whose, sizeof whose, "its own listener");
	else
		snprintf(whose, sizeof whose, "the listener of forward \"%s\" (%s)", listener->name,
			 listener->origin);
	return config_fail(err, err_len, fwd->origin, label,
			   "its %s target %s:%u is %s: it would loop through the relay",
			   forward_proto_name(proto), where, port, whose);
}

/*
 * fwd's target against every listener whose ports meet it: a listener that
 * takes the target's address is a loop (an error); one on another address
 * of this host, while the target is local too, is only worth a warning.
 */
static int config_check_target(const struct forward *fwd, const struct config_listeners *set,
			       struct config_local_addrs *local, char *err, size_t err_len)
{
	uint16_t first = fwd->internal_port_first, last = fwd->internal_port_last;
	struct net_addr target = config_reached_address(&fwd->internal_addr);
	const struct forward *warned = NULL;
	size_t end = 0, high = set->count;

	/*
	 * end: how many listeners start at or before `last` (a binary search);
	 * then down from there, while any can still reach `first`.
	 */
	while (end < high) {
		size_t middle = end + (high - end) / 2;
		if (set->by_port[middle]->external_port_first <= last)
			end = middle + 1;
		else
			high = middle;
	}
	for (size_t i = end; i-- > 0 && set->max_last[i] >= first;) {
		const struct forward *listener = set->by_port[i];
		enum forward_proto shared = (enum forward_proto)(listener->proto & fwd->proto);
		if (listener->external_port_last < first || shared == 0)
			continue;
		uint16_t port = listener->external_port_first > first ?
			listener->external_port_first : first;
		if (config_listener_takes(&listener->external_addr, &target, local))
			return config_loop_fail(fwd, listener,
						shared & FORWARD_TCP ? FORWARD_TCP : FORWARD_UDP,
						&target, port, err, err_len);
		if (warned == NULL && config_is_local(&target, local))
			warned = listener;
	}
	if (warned != NULL) {
		char ip[NET_ADDR_STRLEN], where[NET_ADDR_STRLEN + 8], listen_ip[NET_ADDR_STRLEN];
		char whose[CONFIG_NAME_MAX + 32], ports[CONFIG_PORT_TEXT_MAX];
		if (warned == fwd)
			snprintf(whose, sizeof whose, "this forward");
		else
			snprintf(whose, sizeof whose, "forward \"%s\"", warned->name);
		config_describe_ip(net_addr_format_ip(&target, ip, sizeof ip), where, sizeof where);
		log_warn(fwd->name, "its target %s:%s is an address of this host, and %s listens "
			 "on that port (on %s, %s): not a loop, but check that the target is right",
			 where, config_ports_format(first, last, ports, sizeof ports), whose,
			 net_addr_format_ip(&warned->external_addr, listen_ip, sizeof listen_ip),
			 warned->origin);
	}
	return 0;
}

/*
 * A forward whose target is one of the relay's own listeners (its own or
 * another forward's, through a wildcard bind or a local address, over
 * ranges and `both`) would relay each connection or datagram back into
 * the relay, each hop taking more descriptors (or flows) until none is
 * left: a configuration error. A sweep over the listeners sorted by port
 * keeps the check near O(n log n).
 */
static int config_check_loops(const struct config *cfg, char *err, size_t err_len)
{
	struct config_listeners set = { 0 };
	struct config_local_addrs local = { .addrs = NULL, .count = -1 };
	int rc = 0;

	set.by_port = calloc(cfg->forward_count + 1, sizeof *set.by_port);
	set.max_last = calloc(cfg->forward_count + 1, sizeof *set.max_last);
	if (set.by_port == NULL || set.max_last == NULL) {
		rc = config_fail(err, err_len, "config", "", "out of memory");
		goto out;
	}
	for (size_t i = 0; i < cfg->forward_count; i++) {
		if (cfg->forwards[i].enabled)
			set.by_port[set.count++] = &cfg->forwards[i];
	}
	qsort(set.by_port, set.count, sizeof *set.by_port, config_listener_compare);
	for (size_t i = 0; i < set.count; i++) {
		uint16_t last = set.by_port[i]->external_port_last;
		set.max_last[i] = i > 0 && set.max_last[i - 1] > last ? set.max_last[i - 1] : last;
	}
	for (size_t i = 0; i < cfg->forward_count && rc == 0; i++) {
		if (cfg->forwards[i].enabled)
			rc = config_check_target(&cfg->forwards[i], &set, &local, err, err_len);
	}
out:
	free(set.by_port);
	free(set.max_last);
	free(local.addrs);
	return rc;
}

int config_finish(struct config *cfg, char *err, size_t err_len)
{
	for (size_t i = 0; i < cfg->forward_count; i++) {
		if (config_finish_forward(cfg, &cfg->forwards[i], err, err_len, NULL) < 0)
			return -1;
	}
	if (config_check_overlaps(cfg, err, err_len) < 0)
		return -1;
	if (config_check_ftp_data_ports(cfg, err, err_len) < 0)
		return -1;
	return config_check_loops(cfg, err, err_len);
}

int config_load_sources(struct config *cfg, const struct config_sources *sources, char *err,
			size_t err_len)
{
	config_defaults(cfg);
	if (sources->path != NULL && config_load_file(cfg, sources->path, err, err_len) < 0)
		goto fail;
	for (size_t i = 0; i < sources->spec_count; i++) {
		if (config_add_spec(cfg, sources->specs[i], err, err_len) < 0)
			goto fail;
	}
	/* The daemon's own rules come last: the hand-written ones keep their lines first. */
	if (cfg->admin_rules_file[0] != '\0' &&
	    config_load_rules_file(cfg, cfg->admin_rules_file, sources->rules_file_read, err,
				   err_len) < 0)
		goto fail;
	if (config_finish(cfg, err, err_len) < 0)
		goto fail;
	return 0;
fail:
	config_free(cfg);
	return -1;
}

bool forward_same_place(const struct forward *a, const struct forward *b)
{
	return a->proto == b->proto && a->external_port_first == b->external_port_first &&
	       a->external_port_last == b->external_port_last &&
	       net_addr_same_ip(&a->external_addr, &b->external_addr);
}

bool forward_same_target(const struct forward *a, const struct forward *b)
{
	return forward_same_place(a, b) && net_addr_same_ip(&a->internal_addr, &b->internal_addr) &&
	       a->internal_port_first == b->internal_port_first &&
	       a->internal_port_last == b->internal_port_last && a->ftp == b->ftp &&
	       a->proxy_protocol == b->proxy_protocol && a->source_client == b->source_client;
}

bool forward_same_rule(const struct forward *a, const struct forward *b)
{
	return forward_same_target(a, b) && strcmp(a->name, b->name) == 0 &&
	       a->enabled == b->enabled && strcmp(a->internal_host, b->internal_host) == 0 &&
	       a->udp_idle_timeout == b->udp_idle_timeout &&
	       a->ftp_data_port_first == b->ftp_data_port_first &&
	       a->ftp_data_port_last == b->ftp_data_port_last &&
	       a->max_connections == b->max_connections &&
	       a->max_connections_per_source == b->max_connections_per_source &&
	       a->max_flows_per_source == b->max_flows_per_source &&
	       a->access_log == b->access_log &&
	       a->freebind == b->freebind && acl_equal(&a->acl, &b->acl);
}

/* ---- describing forwards ----------------------------------------------- */

unsigned forward_port_count(const struct forward *fwd)
{
	return config_port_span(fwd->external_port_first, fwd->external_port_last);
}

const char *forward_proto_name(enum forward_proto proto)
{
	switch (proto) {
	case FORWARD_TCP:
		return "tcp";
	case FORWARD_UDP:
		return "udp";
	case FORWARD_BOTH:
		return "both";
	}
	return "?";
}

/* An address for "ADDR:PORT": IPv6 in brackets. */
static void config_describe_ip(const char *ip, char *buf, size_t len)
{
	if (strchr(ip, ':') != NULL)
		snprintf(buf, len, "[%s]", ip);
	else
		snprintf(buf, len, "%s", ip);
}

static void config_describe_external(const struct forward *fwd, char *buf, size_t len)
{
	char ip[CONFIG_HOST_MAX];
	char ports[CONFIG_PORT_TEXT_MAX];
	char host[CONFIG_HOST_MAX + 2];

	/* Before config_finish the address may still be unset: the WAN address. */
	if (fwd->external_addr.len != 0 && !config_scoped_ipv6(fwd->external_host))
		net_addr_format_ip(&fwd->external_addr, ip, sizeof ip);
	else
		snprintf(ip, sizeof ip, "%s", fwd->external_host[0] ? fwd->external_host : "*");
	config_describe_ip(ip, host, sizeof host);
	snprintf(buf, len, "%s:%s", host,
		 config_ports_format(fwd->external_port_first, fwd->external_port_last, ports,
				     sizeof ports));
}

/* "192.0.2.10:80", "[fd00::5]:80", or a resolved name "localhost (127.0.0.1):80". */
static void config_describe_internal(const struct forward *fwd, char *buf, size_t len)
{
	char ip[NET_ADDR_STRLEN];
	char host[CONFIG_HOST_MAX + NET_ADDR_STRLEN + 4];
	char ports[CONFIG_PORT_TEXT_MAX];
	struct net_addr numeric;

	if (net_addr_parse_ip(fwd->internal_host, 0, &numeric) == 0 ||
	    config_scoped_ipv6(fwd->internal_host)) {
		config_describe_ip(fwd->internal_host, host, sizeof host);
	} else if (fwd->internal_addr.len != 0) {
		snprintf(host, sizeof host, "%s (%s)", fwd->internal_host,
			 net_addr_format_ip(&fwd->internal_addr, ip, sizeof ip));
	} else {
		snprintf(host, sizeof host, "%s", fwd->internal_host);
	}
	snprintf(buf, len, "%s:%s", host,
		 config_ports_format(fwd->internal_port_first, fwd->internal_port_last, ports,
				     sizeof ports));
}

struct net_addr forward_internal_addr(const struct forward *fwd, uint16_t external_port)
{
	struct net_addr addr = fwd->internal_addr;
	net_addr_set_port(&addr, (uint16_t)(fwd->internal_port_first +
					    (external_port - fwd->external_port_first)));
	return addr;
}

const char *forward_describe(const struct forward *fwd, char *buf, size_t buf_len)
{
	char external[CONFIG_HOST_MAX + CONFIG_PORT_TEXT_MAX + 4];
	char internal[CONFIG_HOST_MAX + NET_ADDR_STRLEN + CONFIG_PORT_TEXT_MAX + 8];

	char ftp[64] = "";
	char ports[CONFIG_PORT_TEXT_MAX];

	config_describe_external(fwd, external, sizeof external);
	config_describe_internal(fwd, internal, sizeof internal);
	if (fwd->ftp && fwd->ftp_data_port_first != 0)
		snprintf(ftp, sizeof ftp, "  ftp helper, data ports %s",
			 config_ports_format(fwd->ftp_data_port_first, fwd->ftp_data_port_last,
					     ports, sizeof ports));
	else if (fwd->ftp)
		snprintf(ftp, sizeof ftp, "  ftp helper");
	snprintf(buf, buf_len, "%s  %-4s %s -> %s%s%s", fwd->name, forward_proto_name(fwd->proto),
		 external, internal, ftp, fwd->enabled ? "" : "  (disabled)");
	return buf;
}

bool forward_overlaps(const struct forward *a, const struct forward *b)
{
	return a->enabled && b->enabled && a->external_port_first <= b->external_port_last &&
	       b->external_port_first <= a->external_port_last && config_forwards_collide(a, b);
}
