// grafanacheck decodes Grafana dashboard JSON strictly with the Grafana Foundation SDK (the
// dashboard schema as Go types: unknown fields, wrong types and missing required options are
// errors) and runs its Validate(). Usage: grafanacheck FILE.json...

package main

import (
	"fmt"
	"os"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

func main() {
	plugins.RegisterDefaultPlugins()
	failed := false
	for _, path := range os.Args[1:] {
		raw, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		var d dashboard.Dashboard
		if err := noErrors(d.UnmarshalJSONStrict(raw)); err != nil {
			fmt.Printf("%s: strict decode: %v\n", path, err)
			failed = true
			continue
		}
		if err := noErrors(d.Validate()); err != nil {
			fmt.Printf("%s: validate: %v\n", path, err)
			failed = true
			continue
		}
		fmt.Printf("%s: ok (%d panels)\n", path, len(d.Panels))
	}
	if failed {
		os.Exit(1)
	}
}

// noErrors turns an empty cog.BuildErrors (returned as a non-nil error) into nil.
func noErrors(err error) error {
	if errs, ok := err.(cog.BuildErrors); ok && len(errs) == 0 {
		return nil
	}
	return err
}
