"""blogtune.train"""
