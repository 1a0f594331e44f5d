package api

import (
	"strings"
	"unicode/utf8"
)

// CleanPath checks a DFS path and returns it in canonical form. A path is
// absolute, at most MaxPathLen bytes of UTF-8, and made of names that are
// not empty, not "." or "..", at most MaxPathSegLen bytes, and free of NUL
// and control characters. One trailing slash is accepted and dropped. It
// never rewrites a path into a different one ("a/../b" is refused, not
// cleaned), so what a user names is what is changed.
func CleanPath(field, p string) (string, error) {
	if p == "" {
		return "", invalid(field, "must not be empty")
	}
	if len(p) > MaxPathLen {
		return "", invalid(field, "path is %d bytes long; at most %d are allowed", len(p), MaxPathLen)
	}
	if !utf8.ValidString(p) {
		return "", invalid(field, "%q is not valid UTF-8", truncate(p))
	}
	if p[0] != '/' {
		return "", invalid(field, "%q is not absolute; paths start with /", truncate(p))
	}
	if p == "/" {
		return p, nil
	}
	p = strings.TrimSuffix(p, "/")
	for _, seg := range strings.Split(p[1:], "/") {
		switch {
		case seg == "":
			return "", invalid(field, "%q has an empty name (two slashes in a row)", truncate(p))
		case seg == "." || seg == "..":
			return "", invalid(field, "%q contains %q; use absolute paths without . or ..", truncate(p), seg)
		case len(seg) > MaxPathSegLen:
			return "", invalid(field, "a name in %q is %d bytes long; at most %d are allowed", truncate(p), len(seg), MaxPathSegLen)
		}
		for _, r := range seg {
			if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
				return "", invalid(field, "%q contains the control character %U", truncate(p), r)
			}
		}
	}
	return p, nil
}

// ClusterRoot is the directory a cluster's tasks and tokens are confined to.
func ClusterRoot(cluster string) string { return "/clusters/" + cluster }

// WithinDir reports whether path p is dir or lies under it. Both must be
// clean.
func WithinDir(p, dir string) bool {
	if dir == "/" {
		return true
	}
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// PathDir returns the parent of a clean path ("/" for "/").
func PathDir(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i <= 0 {
		return "/"
	}
	return p[:i]
}

// PathBase returns the last name of a clean path ("/" for "/").
func PathBase(p string) string {
	if p == "/" {
		return "/"
	}
	return p[strings.LastIndexByte(p, '/')+1:]
}

// JoinPath joins a clean directory and a relative path of names.
func JoinPath(dir, rel string) string {
	if rel == "" {
		return dir
	}
	if dir == "/" {
		return "/" + rel
	}
	return dir + "/" + rel
}
