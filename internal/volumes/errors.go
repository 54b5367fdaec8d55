package volumes

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinels callers branch on with errors.Is. Errors carrying details wrap
// them.
var (
	// ErrNotFound: no volume has that ID or name.
	ErrNotFound = errors.New("volume not found")
	// ErrInUse: the volume's attachments forbid the operation (attach
	// conflict, delete while attached).
	ErrInUse = errors.New("volume in use")
	// ErrExists: the name or ID is taken.
	ErrExists = errors.New("volume already exists")
	// ErrInvalid: a request field is invalid (*InvalidError names it).
	ErrInvalid = errors.New("invalid volume request")
)

// InvalidError names the field at fault and how to fix it. It matches
// ErrInvalid.
type InvalidError struct {
	Field  string
	Reason string
}

func (e *InvalidError) Error() string { return fmt.Sprintf("invalid %s: %s", e.Field, e.Reason) }
func (e *InvalidError) Unwrap() error { return ErrInvalid }

// InUseError says which instances hold the volume. It matches ErrInUse.
type InUseError struct {
	Volume    string
	Op        string // "delete", "attach read-write", ...
	Instances []string
}

func (e *InUseError) Error() string {
	return fmt.Sprintf("cannot %s volume %s: it is attached to instance(s) %s; detach it or delete those instances first",
		e.Op, e.Volume, strings.Join(e.Instances, ", "))
}
func (e *InUseError) Unwrap() error { return ErrInUse }

// ArchiveError is a from-archive body that cannot be used: not gzip, a
// corrupt tar, or an entry the strict policy refuses (the message names the
// entry). It matches ErrInvalid.
type ArchiveError struct{ Err error }

func (e *ArchiveError) Error() string   { return "invalid archive: " + e.Err.Error() }
func (e *ArchiveError) Unwrap() []error { return []error{ErrInvalid, e.Err} }

// TooLargeError is an archive whose content does not fit in size_gb.
type TooLargeError struct {
	SizeGB int
	What   string // "compressed archive", "unpacked archive", "archive files", "archive content"
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("%s exceeds size_gb=%d (%d GiB): raise size_gb or make the archive smaller", e.What, e.SizeGB, e.SizeGB)
}
