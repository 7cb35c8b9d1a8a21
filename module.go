package caddylock
