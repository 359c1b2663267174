/*
 * www.h - the Port Forwarding page's files (src/www/), compiled into the
 * binary by src/www/embed.py: the admin endpoint serves them from memory,
 * so the page needs no files on disk and nothing from the internet.
 */
#ifndef PORTRELAY_WWW_H
#define PORTRELAY_WWW_H

#include <stddef.h>

struct www_file {
	const char *name;          /* the file's name: "index.html" */
	const char *content_type;  /* "text/html; charset=utf-8" */
	const unsigned char *data; /* size bytes (and a NUL after them) */
	size_t size;
};

/* The file of that name, or NULL. */
const struct www_file *www_find(const char *name);

#endif
