// Package reqinfo carries facts about a request that layers below the HTTP
// handler learn and the access log reports (for example the cluster member
// that served a forwarded request).
package reqinfo

import (
	"context"
	"sync"
)

// Info is filled in while a request is handled.
type Info struct {
	mu    sync.Mutex
	owner string
}

type key struct{}

// With returns ctx carrying a new Info.
func With(ctx context.Context) (context.Context, *Info) {
	i := &Info{}
	return context.WithValue(ctx, key{}, i), i
}

// SetOwner records the member a request was forwarded to ("" when served
// locally). It does nothing when ctx carries no Info.
func SetOwner(ctx context.Context, member string) {
	if i, ok := ctx.Value(key{}).(*Info); ok {
		i.mu.Lock()
		i.owner = member
		i.mu.Unlock()
	}
}

// Owner returns the recorded member.
func (i *Info) Owner() string {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.owner
}
