package guestproc

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

// ErrUnknownUser and ErrUnknownGroup are returned (wrapped) when a name does
// not appear in the image's passwd or group file.
var (
	ErrUnknownUser  = errors.New("unable to find user")
	ErrUnknownGroup = errors.New("unable to find group")
)

// PasswdEntry is one line of /etc/passwd.
type PasswdEntry struct {
	Name  string
	UID   uint32
	GID   uint32
	Home  string
	Shell string
}

// GroupEntry is one line of /etc/group.
type GroupEntry struct {
	Name    string
	GID     uint32
	Members []string
}

// User is a resolved user: the credentials a process runs with.
type User struct {
	Name   string // empty when the user is numeric and not in passwd
	UID    uint32
	GID    uint32
	Groups []uint32 // supplementary groups
	Home   string
}

// ParsePasswd parses passwd(5) content. Malformed lines (too few fields,
// non-numeric ids) and comments are skipped, like libc does.
func ParsePasswd(r io.Reader) ([]PasswdEntry, error) {
	var out []PasswdEntry
	err := eachLine(r, func(f []string) {
		if len(f) < 7 {
			return
		}
		uid, err1 := parseID(f[2])
		gid, err2 := parseID(f[3])
		if err1 != nil || err2 != nil || f[0] == "" {
			return
		}
		out = append(out, PasswdEntry{Name: f[0], UID: uid, GID: gid, Home: f[5], Shell: f[6]})
	})
	if err != nil {
		return nil, fmt.Errorf("parse passwd: %w", err)
	}
	return out, nil
}

// ParseGroup parses group(5) content, skipping malformed lines.
func ParseGroup(r io.Reader) ([]GroupEntry, error) {
	var out []GroupEntry
	err := eachLine(r, func(f []string) {
		if len(f) < 4 || f[0] == "" {
			return
		}
		gid, err := parseID(f[2])
		if err != nil {
			return
		}
		g := GroupEntry{Name: f[0], GID: gid}
		for _, m := range strings.Split(f[3], ",") {
			if m = strings.TrimSpace(m); m != "" {
				g.Members = append(g.Members, m)
			}
		}
		out = append(out, g)
	})
	if err != nil {
		return nil, fmt.Errorf("parse group: %w", err)
	}
	return out, nil
}

func eachLine(r io.Reader, fn func([]string)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fn(strings.Split(line, ":"))
	}
	return sc.Err()
}

func parseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
	return uint32(n), err
}

// LookupUser resolves spec ("", "name", "uid", "uid:gid", "name:group",
// "name:gid", "uid:group") with Docker/runc semantics:
//   - "" means root (uid 0, gid 0);
//   - a name must exist in passwd, a group name must exist in group;
//   - a numeric uid not in passwd runs with gid 0 (unless given) and home "/";
//   - supplementary groups are the groups listing the user's name as member;
//   - home is the passwd home directory, else "/".
func LookupUser(spec string, passwd []PasswdEntry, groups []GroupEntry) (User, error) {
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	if userPart == "" {
		if hasGroup && groupPart != "" {
			return User{}, fmt.Errorf("user %q: empty user part", spec)
		}
		userPart = "0"
	}
	var u User
	var entry *PasswdEntry
	if uid, err := parseID(userPart); err == nil {
		u.UID = uid
		for i := range passwd {
			if passwd[i].UID == uid {
				entry = &passwd[i]
				break
			}
		}
	} else {
		for i := range passwd {
			if passwd[i].Name == userPart {
				entry = &passwd[i]
				break
			}
		}
		if entry == nil {
			return User{}, fmt.Errorf("%w %s: no matching entries in /etc/passwd", ErrUnknownUser, userPart)
		}
		u.UID = entry.UID
	}
	u.Home = "/"
	if entry != nil {
		u.Name = entry.Name
		u.GID = entry.GID
		if entry.Home != "" {
			u.Home = entry.Home
		}
	}
	if hasGroup {
		if groupPart == "" {
			return User{}, fmt.Errorf("user %q: empty group part", spec)
		}
		if gid, err := parseID(groupPart); err == nil {
			u.GID = gid
		} else {
			found := false
			for _, g := range groups {
				if g.Name == groupPart {
					u.GID, found = g.GID, true
					break
				}
			}
			if !found {
				return User{}, fmt.Errorf("%w %s: no matching entries in /etc/group", ErrUnknownGroup, groupPart)
			}
		}
	}
	if u.Name != "" {
		seen := map[uint32]bool{}
		for _, g := range groups {
			for _, m := range g.Members {
				if m == u.Name && !seen[g.GID] {
					seen[g.GID] = true
					u.Groups = append(u.Groups, g.GID)
				}
			}
		}
	}
	return u, nil
}

// ResolveUser reads etc/passwd and etc/group inside root (missing files are
// treated as empty) and resolves spec with LookupUser.
func ResolveUser(root, spec string) (User, error) {
	passwd, err := readDB(root, "/etc/passwd", ParsePasswd)
	if err != nil {
		return User{}, err
	}
	groups, err := readDB(root, "/etc/group", ParseGroup)
	if err != nil {
		return User{}, err
	}
	return LookupUser(spec, passwd, groups)
}

func readDB[T any](root, name string, parse func(io.Reader) ([]T, error)) ([]T, error) {
	p, err := ResolveInRoot(root, name)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	defer f.Close()
	return parse(f)
}
