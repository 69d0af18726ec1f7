package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/rs/zerolog"

	"github.com/berthreg/berth/pkg/config"
	"github.com/berthreg/berth/pkg/meta"
	"github.com/berthreg/berth/pkg/meta/bolt"
	"github.com/berthreg/berth/pkg/meta/dynamo"
	"github.com/berthreg/berth/pkg/storage"
	"github.com/berthreg/berth/pkg/storage/fs"
	"github.com/berthreg/berth/pkg/storage/s3"
)

// openStorage builds the content store from storage.storageDriver.
func openStorage(ctx context.Context, sc config.StorageConfig, log zerolog.Logger) (storage.Driver, error) {
	switch sc.DriverName() {
	case config.DriverFilesystem:
		d, err := fs.New(sc.RootDirectory, log.With().Str("component", "fs").Logger())
		if err != nil {
			return nil, fmt.Errorf("open storage %s: %w", sc.RootDirectory, err)
		}
		return d, nil
	case config.DriverS3:
		c := sc.StorageDriver
		secure := c.Secure == nil || *c.Secure
		d, err := s3.New(ctx, s3.Config{
			Bucket: c.Bucket, Region: c.Region, Endpoint: c.RegionEndpoint, Prefix: c.RootDirectory,
			ForcePathStyle: c.ForcePathStyle, Secure: secure, SkipVerify: c.SkipVerify,
			AccessKey: c.AccessKey, SecretKey: c.SecretKey, PartSize: c.ChunkSize, Redirect: c.Redirect,
		}, log.With().Str("component", "s3").Logger())
		if err != nil {
			return nil, fmt.Errorf("open s3 bucket %s: %w", c.Bucket, err)
		}
		return d, nil
	}
	return nil, fmt.Errorf("storage.storageDriver.name: unknown driver %q", sc.DriverName())
}

// openMeta builds the metadata store from storage.cacheDriver.
func openMeta(ctx context.Context, sc config.StorageConfig, log zerolog.Logger) (meta.Store, error) {
	switch sc.CacheName() {
	case config.CacheBoltDB:
		dir := filepath.Join(sc.RootDirectory, "_meta")
		if sc.CacheDriver != nil && sc.CacheDriver.RootDir != "" {
			dir = sc.CacheDriver.RootDir
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create metadata directory: %w", err)
		}
		s, err := bolt.Open(filepath.Join(dir, "meta.db"))
		if err != nil {
			return nil, fmt.Errorf("open metadata: %w", err)
		}
		return s, nil
	case config.CacheDynamoDB:
		c := sc.CacheDriver
		s, err := dynamo.New(ctx, dynamo.Config{
			Endpoint: c.Endpoint, Region: c.Region,
			RepoMetaTable: c.RepoMetaTablename, ImageMetaTable: c.ImageMetaTablename,
			RepoBlobsTable: c.RepoBlobsInfoTablename, VersionTable: c.VersionTablename,
		}, log.With().Str("component", "dynamodb").Logger())
		if err != nil {
			return nil, fmt.Errorf("open dynamodb metadata: %w", err)
		}
		return s, nil
	}
	return nil, errors.New("storage.cacheDriver.name: unknown driver " + sc.CacheName())
}
