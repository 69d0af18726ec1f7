package main

import (
	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/auth"
	"github.com/berthreg/berth/pkg/config"
)

// newAuth builds the authorizer from http.auth and http.accessControl.
func newAuth(cfg *config.Config, log zerolog.Logger) (*auth.Authorizer, error) {
	return auth.New(auth.Options{
		Auth:          cfg.HTTP.Auth,
		AccessControl: cfg.HTTP.AccessControl,
		Realm:         cfg.HTTP.Realm,
		Log:           log.With().Str("component", "auth").Logger(),
	})
}
