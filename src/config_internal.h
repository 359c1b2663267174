/*
 * config_internal.h - helpers shared by the parts of the configuration
 * module: config.c (the table, port ranges, config_finish), config_file.c
 * (the libconfig file) and config_spec.c (-L specs). Private to those
 * files; nothing outside src/config*.c includes it.
 *
 * These functions are global, and libconfig also names its functions
 * config_*: a global function here with the name of one of libconfig's
 * would silently replace it at link time (that is why the public
 * initializer is config_defaults, not config_init). Check libconfig.h
 * before adding a name.
 */
#ifndef PORTRELAY_CONFIG_INTERNAL_H
#define PORTRELAY_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "portrelay/config.h"

#define CONFIG_REASON_MAX 768
/* "forward \"NAME\": " with the longest name. */
#define CONFIG_LABEL_MAX (CONFIG_NAME_MAX + 16)
/* A port value as written: "65535-65535" and a margin; longer is never valid. */
#define CONFIG_PORT_TEXT_MAX 32

/* ---- errors ---------------------------------------------------------- */

/*
 * Writes "WHERE: LABELreason" to err and returns -1, the error result of
 * every function in the module. LABEL is "forward \"NAME\": " or empty.
 */
int config_fail(char *err, size_t err_len, const char *where, const char *label,
		const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Writes a reason (without location) for the caller to place; returns -1. */
int config_reason(char *why, size_t why_len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* "forward \"NAME\": ", the label of messages about one forward. */
void config_forward_label(const struct forward *fwd, char *label, size_t len);

/* ---- ports ----------------------------------------------------------- */

struct config_ports {
	uint16_t first;
	uint16_t last;
};

/* "80" or "30000-30009". */
const char *config_ports_format(uint16_t first, uint16_t last, char *buf, size_t len);

/*
 * Parses "N" or "N-M". On failure writes why, naming the value `subject`
 * ("external_port", "internal port"...).
 */
int config_ports_parse(const char *text, const char *subject, struct config_ports *out,
		       char *why, size_t why_len);

/* A single port given as a number (the file allows integers); same rules. */
int config_ports_from_integer(long long value, const char *subject, struct config_ports *out,
			      char *why, size_t why_len);

/*
 * Stores the external and internal ranges in fwd once they pass the width
 * rule (a range maps one to one onto the internal ports); otherwise writes
 * why, naming the two values ext_subject and int_subject.
 */
int config_forward_set_ports(struct forward *fwd,
			     const struct config_ports *external, const char *ext_subject,
			     const struct config_ports *internal, const char *int_subject,
			     char *why, size_t why_len);

/* ---- protocols, hosts, names ----------------------------------------- */

/* "tcp", "udp" or "both"; -1 for anything else. */
int config_proto_parse(const char *text, enum forward_proto *proto);

/*
 * Copies an address without the brackets an IPv6 address may be written
 * in ("[::1]" -> "::1"); -1 if it does not fit or a bracket is unmatched.
 */
int config_copy_unbracketed(const char *text, char *out, size_t out_len);

/*
 * True for a numeric IPv4 or IPv6 address, brackets allowed, and for an
 * IPv6 address with a scope ("fe80::1%eth0"); the bare text goes to out.
 */
bool config_numeric_address(const char *text, char *out, size_t out_len);

/*
 * The address config_numeric_address accepted (bare), with the scope's
 * interface looked up (if_nametoindex; a number is taken as an index).
 * -1 with why ("\"fe80::1%nosuch\": no network interface \"nosuch\"").
 */
int config_parse_address(const char *bare, struct net_addr *addr, char *why, size_t why_len);

/* Why a host name or address cannot be right, or NULL. */
const char *config_host_problem(const char *host);

/* "tcp:8080" or "tcp:30000-30009", for forwards given no name. */
void config_default_name(struct forward *fwd);

/* ---- the table --------------------------------------------------------- */

/* An empty, enabled forward, for a parser to fill in. */
void config_forward_defaults(struct forward *fwd);

/* Appends a copy of fwd; -1 when out of memory. */
int config_append_forward(struct config *cfg, const struct forward *fwd);

/*
 * Completes one forward as config_finish does: its external address from
 * wan_address, its defaults, its internal host resolved. On error, *field
 * (when field is not NULL) names the field at fault.
 */
int config_finish_forward(const struct config *cfg, struct forward *fwd, char *err,
			  size_t err_len, const char **field);

#endif
