package e2e

import (
	"context"
	"encoding/xml"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// conformanceEnv enables every API and data set of the OCI conformance
// tool, including those that are off by default in its config.go.
//
// OCI_DATA_SPARSE stays false on purpose: "sparse" pushes manifests whose
// layers or child manifests were never uploaded and expects them to be
// accepted, while Berth rejects such manifests with MANIFEST_BLOB_UNKNOWN
// (asserted by TestBadInput). The spec allows either; we chose rejection.
var conformanceEnv = []string{
	"OCI_API_PING=true",
	"OCI_API_PULL=true",
	"OCI_API_PUSH=true",
	"OCI_API_BLOBS_ATOMIC=true",
	"OCI_API_BLOBS_DELETE=true",
	"OCI_API_BLOBS_DIGEST_HEADER=true", // off by default
	"OCI_API_BLOBS_MOUNT_ANONYMOUS=true",
	"OCI_API_BLOBS_UPLOAD_CANCEL=true", // off by default
	"OCI_API_MANIFESTS_ATOMIC=true",
	"OCI_API_MANIFESTS_DELETE=true",
	"OCI_API_MANIFESTS_DIGEST_HEADER=true", // off by default
	"OCI_API_MANIFESTS_TAG_PARAM=true",     // off by default
	"OCI_API_TAGS_ATOMIC=true",
	"OCI_API_TAGS_DELETE=true",
	"OCI_API_TAGS_LIST=true",
	"OCI_API_REFERRER=true",
	"OCI_DATA_IMAGE=true",
	"OCI_DATA_INDEX=true",
	"OCI_DATA_INDEX_LIST=true",
	"OCI_DATA_SPARSE=false", // see above
	"OCI_DATA_ARTIFACT=true",
	"OCI_DATA_SUBJECT=true",
	"OCI_DATA_SUBJECT_MISSING=true",
	"OCI_DATA_ARTIFACT_LIST=true",
	"OCI_DATA_SUBJECT_LIST=true",
	"OCI_DATA_DATA_FIELD=true",
	"OCI_DATA_NONDISTRIBUTABLE=true",
	"OCI_DATA_CUSTOM_FIELDS=true",
	"OCI_DATA_NO_LAYERS=true",
	"OCI_DATA_EMPTY_BLOB=true",
	"OCI_DATA_SHA512=true",
	"OCI_LOG=warn",
}

type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Tests    int          `xml:"tests,attr"`
	Errors   int          `xml:"errors,attr"`
	Failures int          `xml:"failures,attr"`
	Skipped  int          `xml:"skipped,attr"`
	Disabled int          `xml:"disabled,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name     string      `xml:"name,attr"`
	Tests    int         `xml:"tests,attr"`
	Failures int         `xml:"failures,attr"`
	Errors   int         `xml:"errors,attr"`
	Skipped  int         `xml:"skipped,attr"`
	Disabled int         `xml:"disabled,attr"`
	Cases    []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string       `xml:"name,attr"`
	Classname string       `xml:"classname,attr"`
	Status    string       `xml:"status,attr"`
	Skipped   *junitResult `xml:"skipped"`
	Failure   *junitResult `xml:"failure"`
	Error     *junitResult `xml:"error"`
	SystemOut string       `xml:"system-out"`
}

type junitResult struct {
	Message string `xml:"message,attr"`
	Data    string `xml:",cdata"`
}

func TestConformance(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be string) {
		r := startRegistry(t, regOpts{Backend: be})
		runConformance(t, r.Host, "conformance/repo1", "conformance/repo2")
	})
}

// runConformance runs the OCI conformance tool against host with every API
// and data set enabled and requires 0 failures, errors and skips.
func runConformance(t *testing.T, host, repo1, repo2 string) {
	t.Helper()
	start := time.Now()
	bin := tool(t, "conformance")
	work := t.TempDir()
	results := filepath.Join(work, "results")
	env := append(clientEnv(t),
		"OCI_REGISTRY="+host,
		"OCI_TLS=disabled",
		"OCI_REPO1="+repo1,
		"OCI_REPO2="+repo2,
		"OCI_RESULTS_DIR="+results,
	)
	env = append(env, conformanceEnv...)
	// The exit status is not the verdict (it can be 0 on failures, and is 1
	// on any failure): junit.xml is.
	res := execCmd(context.Background(), env, work, 5*time.Minute, bin)
	t.Logf("conformance against %s (%s, %s) exited after %s: %v", host, repo1, repo2,
		time.Since(start).Round(time.Millisecond), res.Err)

	raw, err := os.ReadFile(filepath.Join(results, "junit.xml"))
	if err != nil {
		t.Fatalf("no junit.xml (%v); conformance output:\n%s", err, res.Combined)
	}
	var js junitSuites
	if err := xml.Unmarshal(raw, &js); err != nil {
		t.Fatalf("parse junit.xml: %v", err)
	}
	var tests, failures, errs, skipped, disabled int
	var bad []string
	for _, s := range js.Suites {
		tests += s.Tests
		failures += s.Failures
		errs += s.Errors
		skipped += s.Skipped
		disabled += s.Disabled
		for _, c := range s.Cases {
			name := strings.TrimPrefix(c.Classname+" / "+c.Name, " / ")
			// This tool marks a case by its status attribute and puts the
			// reason in system-out; <failure>/<error>/<skipped> may be absent.
			msg := c.SystemOut
			switch {
			case c.Failure != nil || c.Status == "failure":
				if c.Failure != nil {
					msg = c.Failure.Message + "\n" + c.Failure.Data + "\n" + msg
				}
				bad = append(bad, fmt.Sprintf("FAIL  %s: %s", name, firstLines(msg, 6)))
			case c.Error != nil || c.Status == "error":
				if c.Error != nil {
					msg = c.Error.Message + "\n" + c.Error.Data + "\n" + msg
				}
				bad = append(bad, fmt.Sprintf("ERROR %s: %s", name, firstLines(msg, 6)))
			case c.Skipped != nil || c.Status == "skipped":
				if c.Skipped != nil {
					msg = c.Skipped.Message + "\n" + msg
				}
				bad = append(bad, fmt.Sprintf("SKIP  %s: %s", name, firstLines(msg, 4)))
			}
		}
	}
	// Prefer the totals of the top element when present.
	if js.Tests > 0 {
		tests, failures, errs, skipped, disabled = js.Tests, js.Failures, js.Errors, js.Skipped, js.Disabled
	}
	passed := tests - failures - errs - skipped - disabled
	t.Logf("conformance against %s: %d/%d passed (failures %d, errors %d, skipped %d, disabled %d)",
		host, passed, tests, failures, errs, skipped, disabled)
	if tests == 0 || failures != 0 || errs != 0 || skipped != 0 {
		if len(bad) > 80 {
			bad = append(bad[:80], fmt.Sprintf("... and %d more", len(bad)-80))
		}
		t.Errorf("conformance against %s not clean: tests=%d failures=%d errors=%d skipped=%d\n%s\n\ntool summary:\n%s",
			host, tests, failures, errs, skipped, strings.Join(bad, "\n"), tailString(res.Stdout, 60))
		keepResults(t, results)
	}
}

// keepResults copies the results dir somewhere that outlives the test
// ($E2E_ARTIFACTS if set) and logs where.
func keepResults(t *testing.T, src string) {
	t.Helper()
	base := os.Getenv("E2E_ARTIFACTS")
	if base == "" {
		base = os.TempDir()
	}
	dst, err := os.MkdirTemp(base, "berth-conformance-")
	if err != nil {
		t.Logf("cannot keep results: %v", err)
		return
	}
	err = filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if fi.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Logf("copy results: %v", err)
	}
	t.Logf("conformance results (junit.xml, results.yaml, report.html) kept in %s", dst)
}

func firstLines(s string, n int) string {
	l := lines(s)
	if len(l) > n {
		l = append(l[:n], "...")
	}
	return strings.Join(l, " | ")
}

func tailString(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
