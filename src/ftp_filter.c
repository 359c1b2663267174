/*
 * ftp_filter.c - one FTP control connection as a byte-in, byte-out filter:
 * lines, the queue of outstanding commands, the rewrites (ftp_filter.h).
 */
#include "portrelay/ftp_filter.h"

#include <stdlib.h>
#include <string.h>

/* Commands in flight (sent, reply not yet seen) before the client waits. */
#define FTP_QUEUE_MAX 16
/* Bytes waiting for a side past which the filter reads nothing that feeds it. */
#define FTP_OUT_PAUSE (2 * FTP_LINE_MAX)
/* What one feed can add beyond that: a line, its rewrite and queued refusals. */
#define FTP_OUT_MAX (FTP_OUT_PAUSE + 4 * FTP_LINE_MAX)

/* The relay's own replies. */
static const char reply_syntax[] = "501 Syntax error in parameters or arguments.\r\n";
static const char reply_empty[] = "500 Syntax error, command unrecognized.\r\n";
static const char reply_control_chars[] = "501 Command contains a bare CR or NUL.\r\n";
static const char reply_foreign[] =
	"500 Illegal data port: the address is not the client's own.\r\n";
static const char reply_low_port[] =
	"500 Illegal data port: ports below 1024 are refused.\r\n";
static const char reply_long_form[] =
	"502 Command not implemented by the relay; use EPRT or EPSV.\r\n";
static const char reply_need_v1[] = "522 Network protocol not supported, use (1)\r\n";
static const char reply_need_v2[] = "522 Network protocol not supported, use (2)\r\n";
static const char reply_after_epsv_all[] =
	"503 Only EPSV may open data connections after EPSV ALL.\r\n";
static const char reply_epsv_all[] = "200 EPSV ALL command successful.\r\n";
static const char reply_pasv_v6[] = "500 PASV cannot name an IPv6 address; use EPSV.\r\n";
static const char reply_no_data[] = "425 Cannot open data connection.\r\n";
static const char reply_too_long[] =
	"421 Line too long; the relay closes the control connection.\r\n";

enum ftp_pending_kind {
	PENDING_OTHER,     /* passed on as it was: its reply passes untouched */
	PENDING_PASSIVE,   /* PASV/EPSV, passed on as the server's passive command */
	PENDING_ACTIVE,    /* PORT/EPRT, passed on rewritten */
	PENDING_AUTH,      /* AUTH: a 234 turns the channel into TLS */
	PENDING_LOCAL,     /* refused: the relay's reply goes out in its turn */
};

struct ftp_pending {
	enum ftp_pending_kind kind;
	enum ftp_verb client_verb;   /* PASSIVE: PASV (gets 227) or EPSV (gets 229) */
	const char *local_reply;     /* LOCAL */
};

/* Bytes read from one side and not yet taken apart into lines. */
struct ftp_input {
	char *data;       /* FTP_LINE_MAX bytes while anything is held; NULL otherwise */
	size_t len;
	long urgent;      /* index in data of the urgent byte, or -1 */
	bool eof;
};

/* Bytes for one side that it has not taken yet. */
struct ftp_output {
	char *data;
	size_t start, end, cap;
	size_t urgent_end;   /* one past the urgent byte (index in data), 0: none */
};

struct ftp_filter {
	struct ftp_filter_params params;
	struct ftp_filter_hooks hooks;
	bool client_v6;
	struct ftp_input in[2];
	struct ftp_output out[2];
	struct ftp_pending queue[FTP_QUEUE_MAX];
	unsigned queue_head, queue_count;
	int multiline_code;   /* code of the multi-line reply being read, 0: none */
	bool holding;         /* dropping the text lines of a 227/229 about to be rewritten */
	bool auth_pending;    /* an AUTH is out: the client waits for its reply */
	bool epsv_all;
	bool opaque;
	const char *failure;
	uint64_t refused;
};

static enum ftp_side ftp_other(enum ftp_side side)
{
	return side == FTP_CLIENT ? FTP_SERVER : FTP_CLIENT;
}

/* ---- output ---------------------------------------------------------------- */

static size_t ftp_output_pending(const struct ftp_output *out)
{
	return out->end - out->start;
}

static void ftp_fail(struct ftp_filter *f, const char *why);

/* Appends bytes for a side; `urgent` is the index in bytes of an urgent byte, or -1. */
static void ftp_put(struct ftp_filter *f, enum ftp_side to, const char *bytes, size_t len,
		    long urgent)
{
	struct ftp_output *out = &f->out[to];
	if (len == 0)
		return;
	if (out->start > 0 && out->end + len > out->cap) {
		memmove(out->data, out->data + out->start, out->end - out->start);
		out->urgent_end = out->urgent_end > out->start ? out->urgent_end - out->start : 0;
		out->end -= out->start;
		out->start = 0;
	}
	if (out->end + len > out->cap) {
		size_t cap = out->cap == 0 ? 1024 : out->cap;
		while (cap < out->end + len)
			cap *= 2;
		char *data = cap <= FTP_OUT_MAX ? realloc(out->data, cap) : NULL;
		if (data == NULL) {
			ftp_fail(f, "out of memory for the control connection");
			return;
		}
		out->data = data;
		out->cap = cap;
	}
	memcpy(out->data + out->end, bytes, len);
	if (urgent >= 0 && (size_t)urgent < len)
		out->urgent_end = out->end + (size_t)urgent + 1;
	out->end += len;
}

static void ftp_put_text(struct ftp_filter *f, enum ftp_side to, const char *text)
{
	ftp_put(f, to, text, strlen(text), -1);
}

static void ftp_fail(struct ftp_filter *f, const char *why)
{
	if (f->failure != NULL)
		return;
	f->failure = why;
	/* After whatever was waiting for the client; sent as far as it goes. */
	ftp_put_text(f, FTP_CLIENT, reply_too_long);
}

/* ---- the queue of outstanding commands --------------------------------------- */

static struct ftp_pending *ftp_queue_head(struct ftp_filter *f)
{
	return f->queue_count > 0 ? &f->queue[f->queue_head] : NULL;
}

static void ftp_queue_pop(struct ftp_filter *f);

static void ftp_queue_push(struct ftp_filter *f, struct ftp_pending entry)
{
	/*
	 * Full only after the server has gone (ftp_may_process): its oldest
	 * command will never be answered. It goes, so that the ring never
	 * overwrites its head; what waited behind it still waits.
	 */
	if (f->queue_count == FTP_QUEUE_MAX)
		ftp_queue_pop(f);
	f->queue[(f->queue_head + f->queue_count) % FTP_QUEUE_MAX] = entry;
	f->queue_count++;
}

static void ftp_queue_pop(struct ftp_filter *f)
{
	f->queue_head = (f->queue_head + 1) % FTP_QUEUE_MAX;
	f->queue_count--;
}

/* The relay's replies whose turn has come: every command before them is answered. */
static void ftp_queue_flush_local(struct ftp_filter *f)
{
	struct ftp_pending *head;
	while ((head = ftp_queue_head(f)) != NULL && head->kind == PENDING_LOCAL) {
		ftp_put_text(f, FTP_CLIENT, head->local_reply);
		ftp_queue_pop(f);
	}
}

/* The server has closed: nothing more will be answered, so nothing waits for it. */
static bool ftp_server_gone(const struct ftp_filter *f)
{
	return f->in[FTP_SERVER].eof && f->in[FTP_SERVER].len == 0;
}

static void ftp_refuse(struct ftp_filter *f, enum ftp_verb verb, const char *reply,
		       const char *why)
{
	f->refused++;
	if (f->hooks.refused != NULL)
		f->hooks.refused(f->hooks.arg, verb, why);
	ftp_queue_push(f, (struct ftp_pending){ .kind = PENDING_LOCAL, .local_reply = reply });
	ftp_queue_flush_local(f);
}

/* ---- commands ----------------------------------------------------------------- */

static void ftp_pass_command(struct ftp_filter *f, const char *line, size_t full_len, long urgent,
			     enum ftp_pending_kind kind)
{
	ftp_put(f, FTP_SERVER, line, full_len, urgent);
	ftp_queue_push(f, (struct ftp_pending){ .kind = kind });
}

static void ftp_passive(struct ftp_filter *f, enum ftp_verb client_verb)
{
	const char *command = f->params.server_family == AF_INET6 ? "EPSV\r\n" : "PASV\r\n";
	ftp_put_text(f, FTP_SERVER, command);
	ftp_queue_push(f, (struct ftp_pending){ .kind = PENDING_PASSIVE,
						 .client_verb = client_verb });
}

static void ftp_on_pasv(struct ftp_filter *f)
{
	if (f->epsv_all)
		ftp_refuse(f, FTP_VERB_PASV, reply_after_epsv_all, "PASV after EPSV ALL");
	else if (f->client_v6)
		ftp_refuse(f, FTP_VERB_PASV, reply_pasv_v6, "PASV from an IPv6 client");
	else
		ftp_passive(f, FTP_VERB_PASV);
}

static bool ftp_arg_is(const struct ftp_command *cmd, const char *word)
{
	size_t len = strlen(word);
	if (cmd->arg_len != len)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = cmd->arg[i];
		if (c >= 'a' && c <= 'z')
			c = (char)(c - 'a' + 'A');
		if (c != word[i])
			return false;
	}
	return true;
}

static void ftp_on_epsv(struct ftp_filter *f, const struct ftp_command *cmd)
{
	const char *own = f->client_v6 ? "2" : "1";
	if (cmd->arg == NULL || cmd->arg_len == 0 || ftp_arg_is(cmd, own)) {
		ftp_passive(f, FTP_VERB_EPSV);
	} else if (ftp_arg_is(cmd, "ALL")) {
		/* The relay keeps the promise itself; the server never hears of it. */
		f->epsv_all = true;
		ftp_queue_push(f, (struct ftp_pending){ .kind = PENDING_LOCAL,
							 .local_reply = reply_epsv_all });
		ftp_queue_flush_local(f);
	} else if (ftp_arg_is(cmd, "1") || ftp_arg_is(cmd, "2")) {
		ftp_refuse(f, FTP_VERB_EPSV, f->client_v6 ? reply_need_v2 : reply_need_v1,
			   "EPSV for the other address family");
	} else {
		ftp_refuse(f, FTP_VERB_EPSV, reply_syntax, "malformed EPSV");
	}
}

/* PORT and EPRT: the client's own address, an unprivileged port, then a listener. */
static void ftp_on_port(struct ftp_filter *f, const struct ftp_command *cmd)
{
	struct net_addr wanted;
	int parsed = cmd->verb == FTP_VERB_PORT ? ftp_parse_port_arg(cmd->arg, cmd->arg_len, &wanted)
						: ftp_parse_eprt_arg(cmd->arg, cmd->arg_len, &wanted);
	if (f->epsv_all) {
		ftp_refuse(f, cmd->verb, reply_after_epsv_all, "data port after EPSV ALL");
		return;
	}
	if (parsed < 0) {
		ftp_refuse(f, cmd->verb, reply_syntax, "malformed address or port");
		return;
	}
	net_addr_unmap(&wanted);
	bool wanted_v6 = net_addr_family(&wanted) == AF_INET6;
	if (wanted_v6 != f->client_v6) {
		ftp_refuse(f, cmd->verb,
			   cmd->verb == FTP_VERB_PORT ? reply_syntax
						      : (f->client_v6 ? reply_need_v2 : reply_need_v1),
			   "data port of the other address family");
		return;
	}
	if (!net_addr_same_ip(&wanted, &f->params.client_addr)) {
		ftp_refuse(f, cmd->verb, reply_foreign, "data port on another host (bounce)");
		return;
	}
	if (net_addr_port(&wanted) < 1024) {
		ftp_refuse(f, cmd->verb, reply_low_port, "data port below 1024");
		return;
	}

	struct net_addr listen_addr;
	char line[128];
	int len = -1;
	if (f->hooks.open_active(f->hooks.arg, net_addr_port(&wanted), &listen_addr) == 0)
		len = f->params.server_family == AF_INET6
			      ? ftp_format_eprt(line, sizeof line, &listen_addr)
			      : ftp_format_port(line, sizeof line, &listen_addr);
	if (len < 0) {
		ftp_refuse(f, cmd->verb, reply_no_data, "no data listener");
		return;
	}
	ftp_put(f, FTP_SERVER, line, (size_t)len, -1);
	ftp_queue_push(f, (struct ftp_pending){ .kind = PENDING_ACTIVE });
}

static void ftp_on_command(struct ftp_filter *f, const char *line, size_t content_len,
			   size_t full_len, long urgent)
{
	struct ftp_command cmd;
	ftp_command_parse(line, content_len, &cmd);

	if (memchr(line, '\0', content_len) != NULL || memchr(line, '\r', content_len) != NULL) {
		ftp_refuse(f, cmd.verb, reply_control_chars, "bare CR or NUL in a command");
		return;
	}
	if (cmd.empty) {
		/* Servers differ on empty lines (some answer, some do not): answer here. */
		ftp_refuse(f, cmd.verb, reply_empty, "empty command line");
		return;
	}
	if (cmd.verb != FTP_VERB_OTHER && (cmd.leading_blank || !cmd.clean_end)) {
		ftp_refuse(f, cmd.verb, reply_syntax, "malformed command line");
		return;
	}
	switch (cmd.verb) {
	case FTP_VERB_PASV:
		ftp_on_pasv(f);
		break;
	case FTP_VERB_EPSV:
		ftp_on_epsv(f, &cmd);
		break;
	case FTP_VERB_PORT:
	case FTP_VERB_EPRT:
		ftp_on_port(f, &cmd);
		break;
	case FTP_VERB_LPRT:
	case FTP_VERB_LPSV:
		ftp_refuse(f, cmd.verb, reply_long_form, "long address form");
		break;
	case FTP_VERB_AUTH:
		ftp_pass_command(f, line, full_len, urgent, PENDING_AUTH);
		f->auth_pending = true;
		break;
	case FTP_VERB_OTHER:
		ftp_pass_command(f, line, full_len, urgent, PENDING_OTHER);
		break;
	}
}

/* ---- replies ------------------------------------------------------------------ */

/* The server's 227/229 to the relay's passive command: a listener, and the client's form. */
static void ftp_rewrite_passive(struct ftp_filter *f, const struct ftp_pending *head, int code,
				const char *line, size_t content_len)
{
	struct net_addr server_said, listen_addr;
	uint16_t server_port = 0;
	char reply[128];
	int len = -1;

	if (code == 227 && ftp_parse_227(line, content_len, &server_said) == 0)
		server_port = net_addr_port(&server_said);   /* its address is not trusted */
	else if (code == 229)
		ftp_parse_229(line, content_len, &server_port);
	if (server_port != 0 && f->hooks.open_passive(f->hooks.arg, server_port, &listen_addr) == 0)
		len = head->client_verb == FTP_VERB_PASV
			      ? ftp_format_227(reply, sizeof reply, &listen_addr)
			      : ftp_format_229(reply, sizeof reply, net_addr_port(&listen_addr));
	if (len < 0) {
		f->refused++;
		if (f->hooks.refused != NULL)
			f->hooks.refused(f->hooks.arg, head->client_verb,
					 server_port == 0 ? "unreadable passive reply from the server"
							  : "no data listener");
		ftp_put_text(f, FTP_CLIENT, reply_no_data);
		return;
	}
	ftp_put(f, FTP_CLIENT, reply, (size_t)len, -1);
}

/* The last line of a reply with this code. */
static void ftp_on_reply_done(struct ftp_filter *f, int code, const char *line, size_t content_len,
			      size_t full_len)
{
	struct ftp_pending *head = ftp_queue_head(f);
	f->holding = false;
	/* 1xx is preliminary; a reply nobody asked for changes nothing. */
	if (code < 200 || head == NULL) {
		ftp_put(f, FTP_CLIENT, line, full_len, -1);
		return;
	}
	if (head->kind == PENDING_PASSIVE && (code == 227 || code == 229))
		ftp_rewrite_passive(f, head, code, line, content_len);
	else
		ftp_put(f, FTP_CLIENT, line, full_len, -1);
	if (head->kind == PENDING_AUTH) {
		f->auth_pending = false;
		if (code == 234)
			f->opaque = true;
	}
	ftp_queue_pop(f);
	ftp_queue_flush_local(f);
}

static void ftp_on_reply(struct ftp_filter *f, const char *line, size_t content_len,
			 size_t full_len)
{
	int code = 0;
	enum ftp_reply_kind kind = ftp_reply_parse(line, content_len, &code);

	if (f->multiline_code != 0) {
		if (kind == FTP_REPLY_LAST && code == f->multiline_code) {
			f->multiline_code = 0;
			ftp_on_reply_done(f, code, line, content_len, full_len);
		} else if (!f->holding) {
			ftp_put(f, FTP_CLIENT, line, full_len, -1);
		}
		return;
	}
	switch (kind) {
	case FTP_REPLY_FIRST: {
		const struct ftp_pending *head = ftp_queue_head(f);
		f->multiline_code = code;
		/* The text of a passive reply is replaced by the relay's one line. */
		f->holding = head != NULL && head->kind == PENDING_PASSIVE &&
			     (code == 227 || code == 229);
		if (!f->holding)
			ftp_put(f, FTP_CLIENT, line, full_len, -1);
		break;
	}
	case FTP_REPLY_LAST:
		ftp_on_reply_done(f, code, line, content_len, full_len);
		break;
	case FTP_REPLY_TEXT:
		ftp_put(f, FTP_CLIENT, line, full_len, -1);   /* not a reply: passed on as it is */
		break;
	}
}

/* ---- taking input apart --------------------------------------------------------- */

/* Whether lines from `side` may be handled now (their results have room). */
static bool ftp_may_process(const struct ftp_filter *f, enum ftp_side side)
{
	if (f->failure != NULL)
		return false;
	if (ftp_output_pending(&f->out[ftp_other(side)]) >= FTP_OUT_PAUSE)
		return false;
	if (side == FTP_SERVER || f->opaque)
		return true;
	if (ftp_output_pending(&f->out[FTP_CLIENT]) >= FTP_OUT_PAUSE)
		return false;
	if (ftp_server_gone(f))
		return true;
	return !f->auth_pending && f->queue_count < FTP_QUEUE_MAX;
}

/* Drops the first n bytes of a side's input. */
static void ftp_input_consume(struct ftp_input *in, size_t n)
{
	if (n == 0)
		return;
	memmove(in->data, in->data + n, in->len - n);
	in->len -= n;
	in->urgent = in->urgent >= (long)n ? in->urgent - (long)n : -1;
	if (in->len == 0) {
		free(in->data);
		in->data = NULL;
	}
}

/* What is left at EOF without a line end. */
static void ftp_input_tail(struct ftp_filter *f, enum ftp_side side, size_t from)
{
	struct ftp_input *in = &f->in[side];
	/* A partial command could be run by a server at EOF: drop it. A partial reply is harmless. */
	if (side == FTP_SERVER)
		ftp_put(f, FTP_CLIENT, in->data + from, in->len - from,
			in->urgent >= (long)from ? in->urgent - (long)from : -1);
	ftp_input_consume(in, in->len);
}

static void ftp_process(struct ftp_filter *f, enum ftp_side side)
{
	struct ftp_input *in = &f->in[side];
	size_t done = 0;

	while (done < in->len && ftp_may_process(f, side)) {
		const char *start = in->data + done;
		size_t left = in->len - done;
		long urgent = in->urgent >= (long)done ? in->urgent - (long)done : -1;
		if (f->opaque) {
			ftp_put(f, ftp_other(side), start, left, urgent);
			done = in->len;
			break;
		}
		const char *lf = memchr(start, '\n', left);
		if (lf == NULL) {
			if (in->eof) {
				ftp_input_consume(in, done);
				ftp_input_tail(f, side, 0);
				return;
			}
			/* The line so far, not the lines before it in the same read. */
			if (left >= FTP_LINE_MAX)
				ftp_fail(f, side == FTP_CLIENT ? "command line too long"
							       : "reply line too long");
			break;
		}
		size_t full_len = (size_t)(lf - start) + 1;
		size_t content_len = full_len - 1;
		if (content_len > 0 && start[content_len - 1] == '\r')
			content_len--;
		if (urgent >= (long)full_len)
			urgent = -1;
		if (side == FTP_CLIENT)
			ftp_on_command(f, start, content_len, full_len, urgent);
		else
			ftp_on_reply(f, start, content_len, full_len);
		done += full_len;
	}
	ftp_input_consume(in, done);
}

static void ftp_process_all(struct ftp_filter *f)
{
	ftp_process(f, FTP_SERVER);
	ftp_process(f, FTP_CLIENT);
	/* The client's lines may have been waiting for the replies just read. */
	ftp_process(f, FTP_SERVER);
}

/* ---- the interface ------------------------------------------------------------------ */

struct ftp_filter *ftp_filter_new(const struct ftp_filter_params *params,
				  const struct ftp_filter_hooks *hooks)
{
	struct ftp_filter *f = calloc(1, sizeof *f);
	if (f == NULL)
		return NULL;
	f->params = *params;
	net_addr_unmap(&f->params.client_addr);
	f->client_v6 = net_addr_family(&f->params.client_addr) == AF_INET6;
	f->hooks = *hooks;
	f->in[FTP_CLIENT].urgent = f->in[FTP_SERVER].urgent = -1;
	/* The server speaks first: its greeting answers no command. */
	ftp_queue_push(f, (struct ftp_pending){ .kind = PENDING_OTHER });
	return f;
}

void ftp_filter_free(struct ftp_filter *f)
{
	if (f == NULL)
		return;
	for (int side = 0; side < 2; side++) {
		free(f->in[side].data);
		free(f->out[side].data);
	}
	free(f);
}

size_t ftp_filter_room(const struct ftp_filter *f, enum ftp_side side)
{
	const struct ftp_input *in = &f->in[side];
	if (in->eof || !ftp_may_process(f, side))
		return 0;
	return FTP_LINE_MAX - in->len;
}

void ftp_filter_feed(struct ftp_filter *f, enum ftp_side side, const char *data, size_t len,
		     long urgent_at)
{
	struct ftp_input *in = &f->in[side];
	if (len > FTP_LINE_MAX - in->len)
		len = FTP_LINE_MAX - in->len;   /* the caller asked ftp_filter_room first */
	if (len == 0 || f->failure != NULL)
		return;
	if (in->data == NULL) {
		in->data = malloc(FTP_LINE_MAX);
		if (in->data == NULL) {
			ftp_fail(f, "out of memory for the control connection");
			return;
		}
	}
	memcpy(in->data + in->len, data, len);
	if (urgent_at >= 0 && (size_t)urgent_at < len)
		in->urgent = (long)(in->len + (size_t)urgent_at);
	in->len += len;
	ftp_process_all(f);
}

void ftp_filter_eof(struct ftp_filter *f, enum ftp_side side)
{
	f->in[side].eof = true;
	ftp_process_all(f);
}

size_t ftp_filter_output(const struct ftp_filter *f, enum ftp_side side, const char **data,
			 size_t *urgent_len)
{
	const struct ftp_output *out = &f->out[side];
	*data = out->data != NULL ? out->data + out->start : NULL;
	*urgent_len = out->urgent_end > out->start ? out->urgent_end - out->start : 0;
	return ftp_output_pending(out);
}

void ftp_filter_sent(struct ftp_filter *f, enum ftp_side side, size_t n)
{
	struct ftp_output *out = &f->out[side];
	if (n > ftp_output_pending(out))
		n = ftp_output_pending(out);
	out->start += n;
	if (out->urgent_end <= out->start)
		out->urgent_end = 0;
	if (out->start == out->end) {
		free(out->data);
		memset(out, 0, sizeof *out);
	}
	ftp_process_all(f);
}

bool ftp_filter_input_done(const struct ftp_filter *f, enum ftp_side side)
{
	return f->in[side].eof && f->in[side].len == 0;
}

const char *ftp_filter_failure(const struct ftp_filter *f)
{
	return f->failure;
}

bool ftp_filter_is_opaque(const struct ftp_filter *f)
{
	return f->opaque;
}

uint64_t ftp_filter_refused_count(const struct ftp_filter *f)
{
	return f->refused;
}
