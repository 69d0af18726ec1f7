package config

import "strings"

// zotKnown lists the keys of zot's configuration that Berth does not
// implement yet. Loading a file that sets one drops it with a warning rather
// than failing, so a zot file keeps working. Paths use the JSON keys; "[]"
// stands for any element of a list. Matching is case-insensitive.
var zotKnown = []string{
	// Top level. The version fields are filled in by zot's binary and show
	// up in dumped configurations.
	"goVersion", "commit", "releaseTag", "binaryType",
	"scheduler",

	// http
	"http.ratelimit",
	"http.compat",
	"http.externalUrl",
	"http.allowOrigin",
	"http.readOnly",

	// http.auth: methods other than htpasswd and bearer, and the session
	// settings of zot's UI logins. An auth block left with no method is an
	// error (see AuthConfig).
	"http.auth.ldap",
	"http.auth.openid",
	"http.auth.apikey",
	"http.auth.sessionKeysFile",
	"http.auth.sessionDriver",
	"http.auth.secureSession",

	// http.accessControl
	"http.accessControl.metrics",

	// storage
	"storage.subPaths",
	"storage.commit",
	"storage.remoteCache",
	"storage.fastRestart",

	// storage.storageDriver: distribution s3 driver parameters.
	"storage.storageDriver.encrypt",
	"storage.storageDriver.keyid",
	"storage.storageDriver.v4auth",
	"storage.storageDriver.storageclass",
	"storage.storageDriver.useragent",
	"storage.storageDriver.objectacl",
	"storage.storageDriver.multipartcopychunksize",
	"storage.storageDriver.multipartcopymaxconcurrency",
	"storage.storageDriver.multipartcopythresholdsize",
	"storage.storageDriver.sessiontoken",
	"storage.storageDriver.usedualstack",
	"storage.storageDriver.usefipsendpoint",
	"storage.storageDriver.accelerate",
	"storage.storageDriver.loglevel",

	// storage.cacheDriver: the dedupe blob cache, table prefixes and redis.
	"storage.cacheDriver.cacheTablename",
	"storage.cacheDriver.tablenamePrefix",
	"storage.cacheDriver.useRelPaths",
	"storage.cacheDriver.url",
	"storage.cacheDriver.keyprefix",

	// log
	"log.audit",

	// extensions
	"extensions.search",
	"extensions.ui",
	"extensions.scrub",
	"extensions.lint",
	"extensions.trust",
	"extensions.imagetrust",
	"extensions.mgmt",
	"extensions.apikey",
	"extensions.events",
	"extensions.quota",

	// extensions.sync.registries[]
	"extensions.sync.registries[].maxRetryDelay",
	"extensions.sync.registries[].syncLegacyCosignTags",
	"extensions.sync.registries[].credentialHelper",
	"extensions.sync.registries[].oauth2CredentialHelper",
	"extensions.sync.registries[].preserveDigest",
	"extensions.sync.registries[].manifestCheckInterval",
	"extensions.sync.registries[].syncTimeout",
	"extensions.sync.registries[].responseHeaderTimeout",
	"extensions.sync.registries[].reqConcurrent",
	"extensions.sync.registries[].reqPerSec",
	"extensions.sync.registries[].disableHTTP2",
	"extensions.sync.registries[].maxIdleConnsPerHost",
}

// isZotKnown reports whether pattern (a path with "[]" for list elements)
// is a zot key Berth does not implement.
func isZotKnown(pattern string) bool {
	for _, k := range zotKnown {
		if strings.EqualFold(k, pattern) {
			return true
		}
	}
	return false
}

// zotKnownChildren returns the last element of every zotKnown key directly
// under parent, for suggesting a key when one is misspelt.
func zotKnownChildren(parent string) []string {
	var out []string
	for _, k := range zotKnown {
		i := strings.LastIndexByte(k, '.')
		dir, name := "", k
		if i >= 0 {
			dir, name = k[:i], k[i+1:]
		}
		if strings.EqualFold(dir, parent) {
			out = append(out, name)
		}
	}
	return out
}
