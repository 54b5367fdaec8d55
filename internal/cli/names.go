package cli

import (
	"fmt"
	"math/rand/v2"
	"regexp"
)

// nameRule is the server's instance name rule (openapi.yaml
// CreateInstanceRequest.name): lowercase letters, digits and dashes, not
// starting or ending with a dash, at most 63 characters.
var nameRule = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

const maxNameLen = 63

// checkName explains why s is not a valid instance name.
func checkName(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("instance name is empty")
	case len(s) > maxNameLen:
		return fmt.Errorf("instance name %q is %d characters long; the limit is %d", s, len(s), maxNameLen)
	case !nameRule.MatchString(s):
		return fmt.Errorf("instance name %q is invalid: use lowercase letters, digits and dashes, starting and ending with a letter or digit", s)
	}
	return nil
}

// Word lists for generated names: short, lowercase ASCII, inoffensive.
var (
	nameAdjectives = [...]string{
		"agile", "amber", "ample", "azure", "bold", "brave", "brisk", "bright",
		"calm", "clever", "cosmic", "crisp", "dapper", "eager", "early", "fancy",
		"fleet", "fresh", "gentle", "glad", "golden", "grand", "happy", "hardy",
		"jolly", "keen", "kind", "lively", "lucid", "lucky", "mellow", "merry",
		"mighty", "modest", "nimble", "noble", "plucky", "polite", "proud", "quick",
		"quiet", "rapid", "ready", "rosy", "shiny", "silent", "sleek", "snappy",
		"solid", "spry", "steady", "sunny", "swift", "tidy", "upbeat", "vivid",
		"warm", "witty", "zany", "zesty",
	}
	nameNouns = [...]string{
		"badger", "beacon", "bison", "breeze", "canyon", "cedar", "comet", "condor",
		"coral", "crane", "delta", "dune", "eagle", "ember", "falcon", "fern",
		"fjord", "gecko", "glacier", "harbor", "heron", "island", "jaguar", "kestrel",
		"koala", "lagoon", "lark", "lynx", "maple", "meadow", "meteor", "moose",
		"nebula", "otter", "owl", "panda", "pebble", "pine", "planet", "puffin",
		"quartz", "raven", "reef", "river", "robin", "salmon", "sparrow", "summit",
		"tiger", "tundra", "valley", "walrus", "willow", "wombat", "yak", "zebra",
	}
)

// generateName returns a readable instance name: adjective-noun-NNNN.
func generateName(r *rand.Rand) string {
	return fmt.Sprintf("%s-%s-%04d",
		nameAdjectives[r.IntN(len(nameAdjectives))],
		nameNouns[r.IntN(len(nameNouns))],
		r.IntN(10000))
}
