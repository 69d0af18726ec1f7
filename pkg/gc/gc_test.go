package gc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/registry"
	"github.com/berthreg/berth/pkg/storage/fs"
)

const repo = "lib/app"

// scene is a repository after pushes, untags, tag overwrites and deletes.
type scene struct {
	a, b, c, d, e    img // a tagged; b untagged; c overwritten by d; e deleted
	m1, m2, multi    img // multi: tagged index over m1, m2 (pushed by digest)
	m3, j            img // j: untagged index over m3
	r1, r2, r3       img // referrers of a (present), e (deleted), b (collected)
	y                img // untagged, pushed after aging: younger than UntaggedDelay
	shared           v1.Descriptor
	orphan, orphanY  v1.Descriptor // never referenced: old, and young
	names            map[digest.Digest]string
	wantBlobsRemoved []digest.Digest // with deleteReferrers off
}

// buildScene pushes the scene into repo and ages everything but y and
// orphanY by two hours.
func buildScene(t *testing.T, e *env) *scene {
	t.Helper()
	s := &scene{}
	s.shared = e.blob(t, repo, v1.MediaTypeImageLayerGzip, []byte("shared base layer"))
	s.a = e.push(t, repo, "a", e.image(t, repo, "a", nil, s.shared))
	s.b = e.push(t, repo, "b", e.image(t, repo, "b", nil, s.shared))
	e.del(t, repo, "b")
	s.c = e.push(t, repo, "c", e.image(t, repo, "c", nil))
	s.d = e.push(t, repo, "c", e.image(t, repo, "d", nil))
	s.e = e.push(t, repo, "e", e.image(t, repo, "e", nil))
	e.del(t, repo, s.e.desc.Digest.String())
	s.orphan = e.blob(t, repo, v1.MediaTypeImageLayerGzip, []byte("uploaded, never used"))

	s.m1 = e.push(t, repo, "", e.image(t, repo, "m1", nil))
	s.m2 = e.push(t, repo, "", e.image(t, repo, "m2", nil))
	s.multi = e.push(t, repo, "multi", index(s.m1.desc, s.m2.desc))
	s.m3 = e.push(t, repo, "", e.image(t, repo, "m3", nil))
	s.j = e.push(t, repo, "", index(s.m3.desc))

	s.r1 = e.push(t, repo, "", e.artifact(t, repo, "r1", s.a.desc))
	s.r2 = e.push(t, repo, "", e.artifact(t, repo, "r2", s.e.desc))
	s.r3 = e.push(t, repo, "", e.artifact(t, repo, "r3", s.b.desc))

	e.ageAll(t, repo, 2*time.Hour)
	s.y = e.push(t, repo, "", e.image(t, repo, "young", nil))
	s.orphanY = e.blob(t, repo, v1.MediaTypeImageLayerGzip, []byte("young orphan"))

	s.names = map[digest.Digest]string{s.shared.Digest: "shared", s.orphan.Digest: "orphan", s.orphanY.Digest: "young orphan"}
	for n, m := range map[string]img{
		"a": s.a, "b": s.b, "c": s.c, "d": s.d, "e": s.e, "m1": s.m1, "m2": s.m2, "multi": s.multi,
		"m3": s.m3, "j": s.j, "r1": s.r1, "r2": s.r2, "r3": s.r3, "y": s.y,
	} {
		s.names[m.desc.Digest] = n
		for i, b := range m.blobs {
			if _, ok := s.names[b.Digest]; !ok {
				s.names[b.Digest] = n + "/blob" + string(rune('0'+i))
			}
		}
	}
	s.names[s.r1.blobs[0].Digest] = "empty config"
	return s
}

// own returns the manifest and the blobs only m uses (not the shared
// layer nor the empty config).
func (s *scene) own(m img) []digest.Digest {
	out := []digest.Digest{m.desc.Digest}
	for _, b := range m.blobs {
		if b.Digest != s.shared.Digest && b.Digest != s.r1.blobs[0].Digest {
			out = append(out, b.Digest)
		}
	}
	return out
}

// TestPassCollectsExactlyTheGarbage pushes, untags, overwrites and deletes,
// then checks that one pass removes exactly the unreferenced blobs and the
// manifests nothing keeps, that everything else still pulls intact, and
// that the bytes reclaimed are what storage lost.
func TestPassCollectsExactlyTheGarbage(t *testing.T) {
	t.Parallel()
	for _, delRefs := range []bool{false, true} {
		name := "keepOrphanReferrers"
		if delRefs {
			name = "deleteReferrers"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			s := buildScene(t, e)
			before := e.files(t, repo)
			var pols []Policy
			if delRefs {
				pols = []Policy{{Repositories: []string{"lib/**"}, DeleteUntagged: true, DeleteReferrers: true}}
			}
			metrics := prometheus.NewRegistry()
			c := e.collector(t, Options{Delay: time.Hour, Policies: pols, Metrics: metrics})
			rep := pass(t, c, "")

			// Manifests: b (untagged), c (overwritten), j (untagged index),
			// then m3 once j is gone; with deleteReferrers also r2 (subject
			// deleted) and r3 (subject b collected).
			wantManifests := set([]digest.Digest{s.b.desc.Digest, s.c.desc.Digest, s.j.desc.Digest, s.m3.desc.Digest})
			wantKept := set(s.a.digests(), s.d.digests(), s.multi.digests(), s.m1.digests(), s.m2.digests(),
				s.r1.digests(), s.y.digests(), []digest.Digest{s.orphanY.Digest})
			if delRefs {
				wantManifests[s.r2.desc.Digest] = true
				wantManifests[s.r3.desc.Digest] = true
			} else {
				maps.Copy(wantKept, set(s.r2.digests(), s.r3.digests()))
			}
			if got := actions(rep, "manifest"); !maps.Equal(got, wantManifests) {
				t.Errorf("manifests removed:%s", diff(got, wantManifests, s.names))
			}
			if got := actions(rep, "tag"); len(got) != 0 {
				t.Errorf("tags removed without keepTags rules: %v", got)
			}

			after := e.files(t, repo)
			if got := keys(after); !maps.Equal(got, wantKept) {
				t.Errorf("blob files after the pass:%s", diff(got, wantKept, s.names))
			}
			// Everything else was garbage: b, c, e, j, m3 (and r2, r3) with
			// the blobs only they used, and the old orphan.
			wantRemoved := set(s.own(s.b), s.own(s.c), s.own(s.e), s.own(s.j), s.own(s.m3), []digest.Digest{s.orphan.Digest})
			if delRefs {
				maps.Copy(wantRemoved, set(s.own(s.r2), s.own(s.r3)))
			}
			if got := actions(rep, "blob"); !maps.Equal(got, wantRemoved) {
				t.Errorf("blobs removed:%s", diff(got, wantRemoved, s.names))
			}
			var reclaimed, lost int64
			for d, n := range before {
				if _, ok := after[d]; !ok {
					lost += n
				}
			}
			for _, a := range rep.Actions {
				if a.Kind == "blob" {
					reclaimed += a.Size
				}
			}
			if reclaimed != lost || lost == 0 {
				t.Errorf("blob actions add up to %d bytes; storage lost %d", reclaimed, lost)
			}
			// Report.Bytes is what `registry gc` prints as reclaimed.
			if rep.Bytes != lost {
				t.Errorf("Report.Bytes = %d, want %d (the bytes storage lost; manifest actions count their size again?)", rep.Bytes, lost)
			}

			// What is left pulls intact, by tag and by digest.
			e.checkFiles(t, repo)
			e.checkPull(t, repo, "a", s.a.desc.Digest)
			e.checkPull(t, repo, "c", s.d.desc.Digest)
			e.checkPull(t, repo, "multi", s.multi.desc.Digest)
			for _, m := range []img{s.m1, s.m2, s.r1, s.y} {
				e.checkPull(t, repo, m.desc.Digest.String(), m.desc.Digest)
			}
			for _, m := range []img{s.b, s.c, s.j, s.m3} {
				e.gone(t, repo, m.desc.Digest.String())
			}
			wantIndex := set([]digest.Digest{s.a.desc.Digest, s.d.desc.Digest, s.multi.desc.Digest, s.m1.desc.Digest, s.m2.desc.Digest, s.r1.desc.Digest, s.y.desc.Digest})
			if delRefs {
				e.gone(t, repo, s.r2.desc.Digest.String())
				e.gone(t, repo, s.r3.desc.Digest.String())
			} else {
				e.checkPull(t, repo, s.r2.desc.Digest.String(), s.r2.desc.Digest)
				e.checkPull(t, repo, s.r3.desc.Digest.String(), s.r3.desc.Digest)
				wantIndex[s.r2.desc.Digest], wantIndex[s.r3.desc.Digest] = true, true
			}
			if got := e.indexDigests(t, repo); !maps.Equal(got, wantIndex) {
				t.Errorf("index.json manifests:%s", diff(got, wantIndex, s.names))
			}
			refs, err := e.reg.Referrers(t.Context(), repo, s.a.desc.Digest, "")
			if err != nil || len(refs) != 1 || refs[0].Digest != s.r1.desc.Digest.String() {
				t.Errorf("Referrers(a) = %v, %v; want [r1]", refs, err)
			}

			// Metrics moved by what the report says.
			for kind, want := range map[string]int{"manifest": len(wantManifests), "blob": len(wantRemoved), "tag": 0, "upload": 0} {
				if got := metric(t, metrics, "berth_gc_removed_total", "kind", kind); got != float64(want) {
					t.Errorf("berth_gc_removed_total{kind=%q} = %v, want %d", kind, got, want)
				}
			}
			if got := metric(t, metrics, "berth_gc_reclaimed_bytes_total"); got != float64(lost) {
				t.Errorf("berth_gc_reclaimed_bytes_total = %v, want %d (the bytes storage lost)", got, lost)
			}
			if got := metric(t, metrics, "berth_gc_repositories_collected_total"); got != 1 {
				t.Errorf("berth_gc_repositories_collected_total = %v, want 1", got)
			}
			if got := metric(t, metrics, "berth_gc_pass_duration_seconds"); got != 1 {
				t.Errorf("berth_gc_pass_duration_seconds count = %v, want 1", got)
			}

			// A second pass finds nothing more; the counters only add up.
			if rep2 := pass(t, c, ""); len(rep2.Actions) != 0 {
				t.Errorf("second pass removed %+v", rep2.Actions)
			}
			if got := metric(t, metrics, "berth_gc_pass_duration_seconds"); got != 2 {
				t.Errorf("berth_gc_pass_duration_seconds count = %v after two passes, want 2", got)
			}
			if got := metric(t, metrics, "berth_gc_repositories_collected_total"); got != 2 {
				t.Errorf("berth_gc_repositories_collected_total = %v after two passes, want 2", got)
			}
		})
	}
}

// TestPassDryRun checks that a dry run changes nothing and reports exactly
// what a real run then removes.
func TestPassDryRun(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s := buildScene(t, e)
	// Retention too: keep only tag a (drops c and multi, so d, multi, m1,
	// m2 and their blobs go as well).
	pols := []Policy{{Repositories: []string{"**"}, DeleteUntagged: true, DeleteReferrers: true,
		KeepTags: []KeepRule{{MostRecentlyPushedCount: 1, Patterns: compileAll(t, "a")}}}}
	e.session(t, repo) // young: survives both
	old := e.session(t, repo)
	e.oldSession(t, repo, old, 2*time.Hour)

	snap := e.snapshot(t)
	metrics := prometheus.NewRegistry()
	dry := pass(t, e.collector(t, Options{Delay: time.Hour, Policies: pols, DryRun: true, Metrics: metrics}), "")
	if got := metric(t, metrics, "berth_gc_pass_duration_seconds"); got != 1 {
		t.Errorf("dry run: berth_gc_pass_duration_seconds count = %v, want 1", got)
	}
	if got := e.snapshot(t); !maps.Equal(got, snap) {
		for k := range snap {
			if got[k] != snap[k] {
				t.Errorf("dry run changed %s", k)
			}
		}
		for k := range got {
			if _, ok := snap[k]; !ok {
				t.Errorf("dry run created %s", k)
			}
		}
	}
	e.checkPull(t, repo, "c", s.d.desc.Digest)
	if !e.sessionAlive(t, repo, old) {
		t.Error("dry run cancelled an upload session")
	}
	if len(dry.Actions) == 0 {
		t.Fatal("dry run reported nothing")
	}

	real := pass(t, e.collector(t, Options{Delay: time.Hour, Policies: pols}), "")
	key := func(a Action) string { return fmt.Sprintf("%s %s %s %d", a.Repo, a.Kind, a.Ref, a.Size) }
	dk, rk := map[string]bool{}, map[string]bool{}
	for _, a := range dry.Actions {
		dk[key(a)] = true
	}
	for _, a := range real.Actions {
		rk[key(a)] = true
	}
	if !maps.Equal(dk, rk) || len(dry.Actions) != len(real.Actions) || dry.Bytes != real.Bytes {
		t.Errorf("dry run reported %d actions (%d bytes), real run did %d (%d bytes)", len(dry.Actions), dry.Bytes, len(real.Actions), real.Bytes)
		for k := range dk {
			if !rk[k] {
				t.Errorf("  only in dry run: %s", k)
			}
		}
		for k := range rk {
			if !dk[k] {
				t.Errorf("  only in real run: %s", k)
			}
		}
	}
	if got := actions(real, "tag"); !maps.Equal(got, map[digest.Digest]bool{"c": true, "multi": true}) {
		t.Errorf("tags removed = %v, want c and multi", slices.Collect(maps.Keys(got)))
	}
	if e.sessionAlive(t, repo, old) {
		t.Error("real run kept the old upload session")
	}
	e.checkPull(t, repo, "a", s.a.desc.Digest)
	e.checkFiles(t, repo)
}

// TestPassDelays checks gcDelay and retention.delay apart: an untagged
// manifest younger than UntaggedDelay stays; with a short UntaggedDelay
// it goes at once but its young blobs wait for Delay.
func TestPassDelays(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	x := e.push(t, repo, "", e.image(t, repo, "x", nil))
	orphan := e.blob(t, repo, v1.MediaTypeImageLayerGzip, []byte("orphan"))
	all := keys(e.files(t, repo))

	// Both delays long: nothing goes.
	if rep := pass(t, e.collector(t, Options{Delay: time.Hour}), ""); len(rep.Actions) != 0 {
		t.Errorf("pass with young content removed %+v", rep.Actions)
	}
	// Untagged manifests may go at once; blobs only after an hour.
	rep := pass(t, e.collector(t, Options{Delay: time.Hour, UntaggedDelay: time.Nanosecond}), "")
	if got := actions(rep, "manifest"); !maps.Equal(got, set([]digest.Digest{x.desc.Digest})) || len(rep.Actions) != 1 {
		t.Errorf("short UntaggedDelay removed %+v, want manifest x only", rep.Actions)
	}
	e.gone(t, repo, x.desc.Digest.String())
	if got := keys(e.files(t, repo)); !maps.Equal(got, all) {
		t.Errorf("young blobs removed before gcDelay:%s", diff(got, all, nil))
	}
	// Once an hour old, the blobs go.
	e.ageAll(t, repo, 61*time.Minute)
	rep = pass(t, e.collector(t, Options{Delay: time.Hour}), "")
	if got, want := actions(rep, "blob"), set(x.digests(), []digest.Digest{orphan.Digest}); !maps.Equal(got, want) {
		t.Errorf("blobs removed after gcDelay:%s", diff(got, want, nil))
	}
	if got := e.files(t, repo); len(got) != 0 {
		t.Errorf("blobs left: %v", got)
	}

	// A blob just younger than Delay stays, one just older goes.
	young := e.blob(t, repo, "x", []byte("young"))
	old := e.blob(t, repo, "x", []byte("old"))
	e.age(t, repo, 50*time.Minute, young.Digest)
	e.age(t, repo, 70*time.Minute, old.Digest)
	rep = pass(t, e.collector(t, Options{Delay: time.Hour}), "")
	if got := actions(rep, "blob"); !maps.Equal(got, set([]digest.Digest{old.Digest})) {
		t.Errorf("removed %v, want only the blob older than gcDelay", slices.Collect(maps.Keys(got)))
	}
}

// TestPassDeleteUntaggedOff keeps untagged manifests but still deletes
// orphan referrers when asked.
func TestPassDeleteUntaggedOff(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s := buildScene(t, e)
	pols := []Policy{{Repositories: []string{repo}, DeleteUntagged: false, DeleteReferrers: true}}
	rep := pass(t, e.collector(t, Options{Delay: time.Hour, Policies: pols}), "")
	want := set([]digest.Digest{s.r2.desc.Digest})
	if got := actions(rep, "manifest"); !maps.Equal(got, want) {
		t.Errorf("manifests removed with deleteUntagged off:%s", diff(got, want, s.names))
	}
	for _, m := range []img{s.b, s.c, s.j, s.m3, s.r3} {
		e.checkPull(t, repo, m.desc.Digest.String(), m.desc.Digest)
	}
	e.checkFiles(t, repo)
}

// TestPassRetention removes tags outside keepTags, then what they kept.
func TestPassRetention(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var imgs []img
	for i := 1; i <= 5; i++ {
		tag := "v" + string(rune('0'+i))
		m := e.push(t, repo, tag, e.image(t, repo, tag, nil))
		e.age(t, repo, time.Duration(6-i)*time.Hour, m.digests()...) // v1 oldest
		imgs = append(imgs, m)
	}
	e.push(t, repo, "dev", imgs[0]) // same manifest as v1, pushed now
	e.age(t, repo, 5*time.Hour, imgs[0].desc.Digest)
	e.reg.NotePull(repo, imgs[1].desc.Digest.String()) // v2 pulled just now

	pols := []Policy{{Repositories: []string{"lib/*"}, DeleteUntagged: true, KeepTags: []KeepRule{
		{Patterns: compileAll(t, `v\d`), MostRecentlyPushedCount: 2},
		{Patterns: compileAll(t, `v\d`), PulledWithin: time.Hour},
	}}}
	rep := pass(t, e.collector(t, Options{Delay: 30 * time.Minute, Policies: pols}), "")
	// v4, v5 by push count, v2 by pull; dev matches no rule: removed.
	// v1 and v3 go (dev also named v1's manifest, which goes with it).
	wantTags := map[digest.Digest]bool{"v1": true, "v3": true, "dev": true}
	if got := actions(rep, "tag"); !maps.Equal(got, wantTags) {
		t.Errorf("tags removed = %v, want v1, v3, dev", slices.Sorted(maps.Keys(got)))
	}
	wantMan := set([]digest.Digest{imgs[0].desc.Digest, imgs[2].desc.Digest})
	if got := actions(rep, "manifest"); !maps.Equal(got, wantMan) {
		t.Errorf("manifests removed:%s", diff(got, wantMan, nil))
	}
	wantKept := set(imgs[1].digests(), imgs[3].digests(), imgs[4].digests())
	if got := keys(e.files(t, repo)); !maps.Equal(got, wantKept) {
		t.Errorf("blob files:%s", diff(got, wantKept, nil))
	}
	for _, i := range []int{1, 3, 4} {
		e.checkPull(t, repo, "v"+string(rune('1'+i)), imgs[i].desc.Digest)
	}
	for _, tag := range []string{"v1", "v3", "dev"} {
		e.gone(t, repo, tag)
	}
}

// TestPassOwnsAndOnly checks that only owned repositories are touched and
// that a pass limited to one repository touches only that one.
func TestPassOwnsAndOnly(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	repos := []string{"lib/app", "lib/other", "team/x"}
	garbage := map[string][]digest.Digest{}
	for _, r := range repos {
		e.push(t, r, "keep", e.image(t, r, r+"keep", nil))
		u := e.push(t, r, "", e.image(t, r, r+"untagged", nil))
		o := e.blob(t, r, "x", []byte("orphan of "+r))
		garbage[r] = append(u.digests(), o.Digest)
		e.ageAll(t, r, 2*time.Hour)
	}
	sessions := map[string]string{}
	for _, r := range repos {
		sessions[r] = e.session(t, r)
		e.oldSession(t, r, sessions[r], 2*time.Hour)
	}
	type state struct {
		files map[digest.Digest]int64
		alive bool
	}
	snap := func() map[string]state {
		out := map[string]state{}
		for _, r := range repos {
			out[r] = state{e.files(t, r), e.sessionAlive(t, r, sessions[r])}
		}
		return out
	}
	start := snap()
	touched := func(rep Report) map[string]bool {
		out := map[string]bool{}
		for _, a := range rep.Actions {
			out[a.Repo] = true
		}
		return out
	}
	check := func(rep Report, collected ...string) {
		t.Helper()
		want := map[string]bool{}
		for _, r := range collected {
			want[r] = true
		}
		if got := touched(rep); !maps.Equal(got, want) {
			t.Errorf("pass touched %v, want %v", slices.Sorted(maps.Keys(got)), collected)
		}
		for _, r := range repos {
			files := keys(e.files(t, r))
			alive := e.sessionAlive(t, r, sessions[r])
			if want[r] {
				for _, d := range garbage[r] {
					if files[d] {
						t.Errorf("%s: garbage %s left", r, d)
					}
				}
				if alive {
					t.Errorf("%s: old upload session left", r)
				}
			} else if !maps.Equal(e.files(t, r), start[r].files) || alive != start[r].alive {
				t.Errorf("%s: changed by a pass that does not collect it", r)
			}
			e.checkPull(t, r, "keep", e.mustResolve(t, r, "keep"))
		}
	}

	// Owns excludes team/x; --repo of a repository not owned does nothing.
	owns := func(r string) bool { return r != "team/x" }
	if rep := pass(t, e.collector(t, Options{Delay: time.Hour, Owns: owns}), "team/x"); len(rep.Actions) != 0 || rep.Repos != 0 {
		t.Errorf("pass of an unowned repository: %d repos, %+v", rep.Repos, rep.Actions)
	}
	// --repo lib/other only.
	rep := pass(t, e.collector(t, Options{Delay: time.Hour}), "lib/other")
	if rep.Repos != 1 {
		t.Errorf("pass of lib/other collected %d repositories", rep.Repos)
	}
	check(rep, "lib/other")
	start = snap()
	// All owned: lib/app (lib/other is clean already); team/x untouched.
	rep = pass(t, e.collector(t, Options{Delay: time.Hour, Owns: owns}), "")
	if rep.Repos != 2 {
		t.Errorf("pass collected %d repositories, want the 2 owned", rep.Repos)
	}
	check(rep, "lib/app")
}

func (e *env) mustResolve(t *testing.T, repo, ref string) digest.Digest {
	t.Helper()
	m, err := e.reg.Resolve(t.Context(), repo, ref)
	if err != nil {
		t.Fatalf("Resolve %s:%s: %v", repo, ref, err)
	}
	return digest.Digest(m.Digest)
}

// TestPassUploads checks upload session expiry: old abandoned sessions go,
// young ones and ones in use stay.
func TestPassUploads(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	young := e.session(t, repo)
	old := e.session(t, repo)
	e.oldSession(t, repo, old, 2*time.Hour)
	// An old session a request holds right now.
	held, err := e.reg.Store().NewUpload(t.Context(), repo)
	if err != nil {
		t.Fatalf("NewUpload: %v", err)
	}
	e.oldSession(t, repo, held.ID(), 2*time.Hour)

	metrics := prometheus.NewRegistry()
	rep := pass(t, e.collector(t, Options{Delay: time.Hour, Metrics: metrics}), "")
	if len(rep.Actions) != 1 || rep.Actions[0] != (Action{Repo: repo, Kind: "upload", Ref: old}) {
		t.Errorf("actions = %+v, want the old upload only", rep.Actions)
	}
	if e.sessionAlive(t, repo, old) {
		t.Error("old session survived")
	}
	if !e.sessionAlive(t, repo, young) {
		t.Error("young session was cancelled")
	}
	// The held session still works and commits.
	content := []byte("finished late")
	if _, err := held.Append(t.Context(), bytesReader(content)); err != nil {
		t.Errorf("Append to the held session after the pass: %v", err)
	} else if _, err := held.Commit(t.Context(), digest.FromBytes(content)); err != nil {
		t.Errorf("Commit of the held session after the pass: %v", err)
	}
	held.Close()
	if got := metric(t, metrics, "berth_gc_removed_total", "kind", "upload"); got != 1 {
		t.Errorf("berth_gc_removed_total{kind=upload} = %v, want 1", got)
	}
}

// compileAll compiles anchored tag patterns as Compile does.
func compileAll(t *testing.T, pats ...string) []*regexp.Regexp {
	t.Helper()
	var out []*regexp.Regexp
	for _, p := range pats {
		out = append(out, regexp.MustCompile("^(?:"+p+")$"))
	}
	return out
}

func bytesReader(b []byte) *strings.Reader { return strings.NewReader(string(b)) }

// TestIndexOverCollectedChild pushes an index whose child manifest was
// already dropped from index.json by retention (retention.delay shorter
// than gcDelay) while the child's content was still stored: the push is
// acknowledged, so the child and everything it references must survive
// later passes.
func TestIndexOverCollectedChild(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	child := e.push(t, repo, "", e.image(t, repo, "child", nil))
	// Untagged manifests go at once, blobs only after an hour: the child
	// leaves index.json, its content stays.
	pass(t, e.collector(t, Options{Delay: time.Hour, UntaggedDelay: time.Nanosecond}), "")
	if _, err := e.reg.Store().Stat(t.Context(), repo, child.desc.Digest); err != nil {
		t.Fatalf("child content gone before gcDelay: %v", err)
	}
	// A client now pushes an index over it, and is told it is stored.
	ix := index(child.desc)
	if _, err := e.reg.PutManifest(t.Context(), repo, "multi", ix.desc.MediaType, ix.body, nil); err != nil {
		// Refusing the push would be correct too: nothing is acknowledged.
		t.Skipf("index over a collected child refused: %v", err)
	}
	// An hour later the blobs are old; a pass must keep what multi needs.
	e.ageAll(t, repo, 2*time.Hour)
	pass(t, e.collector(t, Options{Delay: time.Hour, UntaggedDelay: time.Nanosecond}), "")
	for _, d := range child.digests() {
		if _, err := e.reg.Store().Stat(t.Context(), repo, d); err != nil {
			t.Errorf("content of child %s of the acknowledged index: %s: %v", child.desc.Digest, d, err)
		}
	}
	e.checkPull(t, repo, "multi", ix.desc.Digest)
}

// TestPassManifestAlreadyGoneFromMetadata: another member (a momentary
// double owner) deleted an untagged manifest from metadata while this
// member's collector removes it from index.json. The manifest is gone
// either way: the pass must not fail, and must go on to collect blobs.
func TestPassManifestAlreadyGoneFromMetadata(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	m := e.push(t, repo, "", e.image(t, repo, "m", nil))
	e.push(t, repo, "keep", e.image(t, repo, "keep", nil))
	e.ageAll(t, repo, 2*time.Hour)
	_, ver, err := e.store.Index(t.Context(), repo)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.md.DeleteManifest(t.Context(), repo, m.desc.Digest.String(), ver); err != nil {
		t.Fatalf("forget manifest in metadata: %v", err)
	}
	rep, err := e.collector(t, Options{Delay: time.Hour}).Pass(t.Context(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Errors) > 0 {
		t.Errorf("pass errors: %q", rep.Errors)
	}
	if got, want := actions(rep, "blob"), set(m.digests()); !maps.Equal(got, want) {
		t.Errorf("blobs removed:%s", diff(got, want, nil))
	}
	if e.indexDigests(t, repo)[m.desc.Digest] {
		t.Error("manifest still listed in index.json")
	}
}

// cancelOnIndex is fs storage that cancels the collector's context when
// index.json of repo is read: a shutdown in the middle of a pass.
type cancelOnIndex struct {
	*fs.Driver
	repo   string
	cancel context.CancelFunc
}

func (c *cancelOnIndex) Index(ctx context.Context, repo string) ([]byte, string, error) {
	if repo == c.repo {
		c.cancel()
		if err := ctx.Err(); err != nil {
			return nil, "", err
		}
	}
	return c.Driver.Index(ctx, repo)
}

// A pass interrupted by shutdown is not reported as a failure: Pass returns
// the context's error without a repository error, and Run logs nothing at
// warn or error level.
func TestPassInterruptedByShutdown(t *testing.T) {
	e := newEnv(t)
	for _, r := range []string{"a", "b", "c"} {
		e.push(t, r, "v1", e.image(t, r, r, nil))
	}
	store := &cancelOnIndex{Driver: e.store, repo: "b"}
	reg := registry.New(store, e.md, zerolog.Nop())

	ctx, cancel := context.WithCancel(t.Context())
	store.cancel = cancel
	var logs bytes.Buffer
	rep, err := New(reg, Options{Log: zerolog.New(&logs)}).Pass(ctx, "", nil)
	if !errors.Is(err, context.Canceled) || len(rep.Errors) > 0 {
		t.Errorf("Pass = errors %q, %v; want none, context.Canceled", rep.Errors, err)
	}
	checkNoWarnings(t, logs.String())

	ctx, cancel = context.WithCancel(t.Context())
	store.cancel = cancel
	logs.Reset()
	New(reg, Options{Interval: time.Millisecond, Log: zerolog.New(&logs)}).Run(ctx)
	checkNoWarnings(t, logs.String())
	if !strings.Contains(logs.String(), "interrupted by shutdown") {
		t.Errorf("Run did not log the interruption:\n%s", logs.String())
	}
}

// checkNoWarnings fails on any zerolog JSON line above info level.
func checkNoWarnings(t *testing.T, logs string) {
	t.Helper()
	for line := range strings.Lines(logs) {
		var ev struct {
			Level string `json:"level"`
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if ev.Level != "debug" && ev.Level != "info" {
			t.Errorf("logged at %s: %s", ev.Level, line)
		}
	}
}
