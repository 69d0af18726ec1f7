package main

// The cluster table: one row per operation, direct to the owner versus
// proxied, with the ratio (throughput) or the overhead (latency).

import (
	"fmt"
	"io"
	"math"
	"sort"
)

// crow is one line of the cluster table. Direct and Proxied hold one value
// per run (throughput) or one percentile (latency).
type crow struct {
	Name          string    `json:"name"`
	Unit          string    `json:"unit"`
	Via           string    `json:"via"`
	Direct        []float64 `json:"direct,omitempty"`
	Proxied       []float64 `json:"proxied"`
	DirectMedian  float64   `json:"directMedian,omitempty"`
	ProxiedMedian float64   `json:"proxiedMedian"`
	// Ratio is the median over runs of proxied/direct (throughput rows).
	Ratio float64 `json:"ratio,omitempty"`
	// Overhead is proxied - direct (latency rows, ms).
	Overhead float64 `json:"overheadMs,omitempty"`
	MinRatio float64 `json:"minRatio,omitempty"`      // target: Ratio ≥ MinRatio
	MaxOver  float64 `json:"maxOverheadMs,omitempty"` // target: Overhead ≤ MaxOver
	Result   string  `json:"result,omitempty"`
}

func (res *results) addCluster(r crow) {
	r.ProxiedMedian = median(r.Proxied)
	if len(r.Direct) > 0 {
		r.DirectMedian = median(r.Direct)
		if r.Unit == "ms" {
			r.Overhead = r.ProxiedMedian - r.DirectMedian
		} else if r.Unit != "CPU s/GiB" {
			r.Ratio = pairedRatio(r.Proxied, r.Direct)
		}
	}
	switch {
	case r.MinRatio > 0:
		r.Result = verdict(r.Ratio >= r.MinRatio)
	case r.MaxOver > 0:
		r.Result = verdict(r.Overhead <= r.MaxOver)
	}
	res.Cluster = append(res.Cluster, r)
}

func one64(v float64) []float64 { return []float64{v} }

// percentile is the nearest-rank percentile of v.
func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[max(0, int(math.Ceil(p*float64(len(s))))-1)]
}

// printCluster prints the cluster table.
func printCluster(out io.Writer, res *results) {
	fmt.Fprintf(out, "cluster: %s\n", res.ClusterSetup)
	if len(res.Cluster) == 0 {
		return
	}
	fmt.Fprintf(out, "(throughput: median of %d runs, ratio = median of proxied/direct within each run; latency: %d sequential requests each, keep-alive)\n\n",
		res.Options.runs, res.Options.hop)
	cells := [][]string{{"measurement", "unit", "direct to owner", "proxied via", "proxied", "ratio", "overhead", "target", "result"}}
	for _, r := range res.Cluster {
		f := num
		if r.Unit == "ms" {
			f = func(v float64) string { return fmt.Sprintf("%.2f", v) }
		}
		direct, ratio, over, target := "-", "-", "-", "-"
		if len(r.Direct) > 0 {
			direct = f(r.DirectMedian)
		}
		if r.Ratio > 0 {
			ratio = fmt.Sprintf("%.2f", r.Ratio)
		}
		if r.Unit == "ms" {
			over = fmt.Sprintf("%+.2f ms", r.Overhead)
		}
		switch {
		case r.MinRatio > 0:
			target = fmt.Sprintf("ratio ≥ %.2f", r.MinRatio)
		case r.MaxOver > 0:
			target = fmt.Sprintf("overhead ≤ %g ms", r.MaxOver)
		}
		cells = append(cells, []string{r.Name, r.Unit, direct, r.Via, f(r.ProxiedMedian), ratio, over, target, orDash(r.Result)})
	}
	markdownTable(out, cells)
	fmt.Fprintln(out)
}
