"""pbxd's HTTP port: the root and its infrastructure (app, errors, auth, limits) and the trees."""
