/*
 * rules_doc.h - admin.rules_file as the Port Forwarding API edits it: the
 * file read into a libconfig document (`forwards = ( { ... }, ... );`),
 * changed in memory, and written whole to a candidate file beside it
 * (temporary name, fsync'ed). A reload reads the candidate and, once its
 * rules run, renames it onto the file (reload_run_candidate): the file is
 * always either the old rules or the new ones.
 *
 * The file is the daemon's: it is rewritten without comments. The
 * hand-written configuration file is never touched.
 */
#ifndef PORTRELAY_RULES_DOC_H
#define PORTRELAY_RULES_DOC_H

#include <libconfig.h>
#include <stdbool.h>
#include <stddef.h>

/* Rules the API keeps at most: each one can hold many ports, so keep it bounded. */
#define RULES_DOC_MAX 1024

struct rules_doc {
	config_t lc;
	config_setting_t *forwards;    /* the list of groups */
	char path[512];
};

/* Reads path (a missing file is an empty document); -1 with err set. */
int rules_doc_load(struct rules_doc *doc, const char *path, char *err, size_t err_len);

void rules_doc_free(struct rules_doc *doc);

/* The group whose name is name, and its index; NULL when there is none. */
config_setting_t *rules_doc_find(const struct rules_doc *doc, const char *name, int *index);

/* A new, empty group at the end; NULL when full (RULES_DOC_MAX) or out of memory. */
config_setting_t *rules_doc_append(struct rules_doc *doc);

int rules_doc_remove(struct rules_doc *doc, int index);

/* Sets the group's `enabled` field. */
int rules_doc_set_enabled(config_setting_t *group, bool enabled);

/*
 * Writes the document to a new file beside doc->path, its name in
 * candidate, synced to disk; -1 with err set (and nothing left behind).
 */
int rules_doc_write_candidate(const struct rules_doc *doc, char *candidate, size_t candidate_len,
			      char *err, size_t err_len);

#endif
