package volumes

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"hypeman/internal/childproc"
)

// replayJournal brings a volume's filesystem to a clean state on the host
// by replaying its journal when it needs it (e2fsck -E journal_only: no
// other check or repair). A writer killed without unmounting (rm --force,
// a crash) leaves committed data in the journal; a guest that mounts the
// volume read-only from a read-only disk cannot replay it and refuses the
// mount, so the store replays it before the first read-only attachment.
// A clean filesystem costs one superblock read.
func replayJournal(ctx context.Context, path string) error {
	out, err := childproc.CommandContext(ctx, "e2fsck", "-p", "-E", "journal_only", path).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() < 4 {
		return nil // 1, 2: the journal was replayed
	}
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if len(msg) > 1000 {
			msg = msg[len(msg)-1000:]
		}
		return fmt.Errorf("replay the volume's journal (e2fsck): %w: %s", err, msg)
	}
	return nil
}
