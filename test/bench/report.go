package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"unicode/utf8"
)

// row is one line of the report. Berth and Base hold one sample per run.
type row struct {
	Name     string    `json:"name"`
	Unit     string    `json:"unit"`
	Berth    []float64 `json:"berth"`
	BaseName string    `json:"baseline,omitempty"`
	Base     []float64 `json:"baselineRuns,omitempty"`
	// Target is the least Berth/baseline ratio that passes (0: none).
	Target float64 `json:"target,omitempty"`
	// Limit is the value Berth must stay under (0: none).
	Limit float64 `json:"limit,omitempty"`

	BerthMedian float64 `json:"berthMedian"`
	BaseMedian  float64 `json:"baselineMedian,omitempty"`
	Ratio       float64 `json:"ratio,omitempty"`
	// BestRatio compares the best runs: on a noisy machine, the capacity.
	BestRatio float64 `json:"bestRatio,omitempty"`
	Result    string  `json:"result,omitempty"`
}

type results struct {
	Machine string  `json:"machine"`
	Options options `json:"-"`
	Rows    []row   `json:"rows"`
	// The cluster section (clusterbench.go).
	ClusterSetup string `json:"clusterSetup,omitempty"`
	Cluster      []crow `json:"cluster,omitempty"`
}

// add completes r's medians, ratio and verdict and appends it.
func (res *results) add(r row) {
	r.BerthMedian = median(r.Berth)
	if len(r.Base) > 0 {
		r.BaseMedian = median(r.Base)
		if r.Unit != "MiB" {
			r.Ratio = pairedRatio(r.Berth, r.Base)
		}
		if strings.HasSuffix(r.Unit, "/s") {
			r.BestRatio = slices.Max(r.Berth) / slices.Max(r.Base)
		}
	}
	switch {
	case r.Target > 0:
		r.Result = verdict(r.Ratio >= r.Target)
	case r.Limit > 0:
		r.Result = verdict(r.BerthMedian < r.Limit)
	}
	res.Rows = append(res.Rows, r)
}

// pairedRatio is the median over runs of Berth/baseline within the same
// run: the runs are interleaved, so this cancels drift of a shared machine.
func pairedRatio(a, b []float64) float64 {
	var rs []float64
	for i := 0; i < len(a) && i < len(b); i++ {
		if b[i] > 0 {
			rs = append(rs, a[i]/b[i])
		}
	}
	return median(rs)
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

func (res *results) print(asJSON bool) {
	var out io.Writer = os.Stdout
	if asJSON {
		out = os.Stderr
		e := json.NewEncoder(os.Stdout)
		e.SetIndent("", "  ")
		_ = e.Encode(struct {
			Machine      string         `json:"machine"`
			Options      map[string]any `json:"options"`
			Rows         []row          `json:"rows"`
			ClusterSetup string         `json:"clusterSetup,omitempty"`
			Cluster      []crow         `json:"cluster,omitempty"`
		}{res.Machine, map[string]any{
			"size": res.Options.size, "big": res.Options.big, "images": res.Options.images, "runs": res.Options.runs,
			"hopRequests": res.Options.hop,
		}, res.Rows, res.ClusterSetup, res.Cluster})
	}
	fmt.Fprintf(out, "\nmachine: %s\n", res.Machine)
	if len(res.Rows) == 0 {
		fmt.Fprintln(out)
	} else {
		res.printSingle(out)
	}
	if res.ClusterSetup != "" {
		printCluster(out, res)
	}
}

func (res *results) printSingle(out io.Writer) {
	o := res.Options
	fmt.Fprintf(out, "options: -size %d -big %d -images %d -runs %d (median of runs; ratio = median of Berth/baseline within each run; best-run ratio = best Berth run / best baseline run)\n\n",
		o.size, o.big, o.images, o.runs)
	cells := [][]string{{"measurement", "unit", "Berth", "baseline", "baseline value", "ratio", "best-run ratio", "target", "result"}}
	for _, r := range res.Rows {
		base, ratio, best, target := "-", "-", "-", "-"
		if len(r.Base) > 0 {
			base = num(r.BaseMedian)
		}
		if r.Ratio > 0 {
			ratio = fmt.Sprintf("%.2f", r.Ratio)
		}
		if r.BestRatio > 0 {
			best = fmt.Sprintf("%.2f", r.BestRatio)
		}
		switch {
		case r.Target > 0:
			target = fmt.Sprintf("ratio ≥ %.2f", r.Target)
		case r.Limit > 0:
			target = fmt.Sprintf("< %s %s", num(r.Limit), r.Unit)
		}
		cells = append(cells, []string{r.Name, r.Unit, num(r.BerthMedian), orDash(r.BaseName), base, ratio, best, target, orDash(r.Result)})
	}
	markdownTable(out, cells)
	fmt.Fprintln(out)
}

func num(v float64) string {
	if v >= 100 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// markdownTable prints cells as an aligned Markdown table: the first row is
// the header, text columns are left-aligned and the rest right-aligned.
func markdownTable(out io.Writer, cells [][]string) {
	width := make([]int, len(cells[0]))
	for _, row := range cells {
		for i, c := range row {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	left := func(i int) bool { return i == 0 || i == 1 || i == 3 || i == 7 }
	line := func(row []string) {
		for i, c := range row {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if left(i) {
				fmt.Fprintf(out, "| %s%s ", c, pad)
			} else {
				fmt.Fprintf(out, "| %s%s ", pad, c)
			}
		}
		fmt.Fprintln(out, "|")
	}
	line(cells[0])
	for i, w := range width {
		if left(i) {
			fmt.Fprintf(out, "|%s", strings.Repeat("-", w+2))
		} else {
			fmt.Fprintf(out, "|%s:", strings.Repeat("-", w+1))
		}
	}
	fmt.Fprintln(out, "|")
	for _, row := range cells[1:] {
		line(row)
	}
}
