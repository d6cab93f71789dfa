/* Stub for building librdkafka (rdkafka-sys, cmake-build) without libcurl's headers.
 *
 * librdkafka 2.12's generated config.h always defines WITH_OAUTHBEARER_OIDC (as 0 when curl is
 * off), and rdkafka_conf.c tests it with #ifdef before including <curl/curl.h>; every use of
 * curl is behind #if, so an empty header is all that compilation needs. meltstream builds
 * librdkafka with curl off. .cargo/config.toml puts this directory on CPATH. */
